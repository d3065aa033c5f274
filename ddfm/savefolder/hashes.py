"""Content hashes of sources and images, so that a resumed run notices a file changed in place.

BLAKE2b (hashlib, 128-bit digest): about 0.95 ms for a 768x1024 PNG of 820 KB on this machine.
Every file is hashed each time it is checked, never taken from a cache: no timestamp can vouch
for a file's bytes. A write through a shared memory mapping moves mtime and ctime only when a
clean page is first written, so later writes go unseen until the kernel has written the page
back (about 30 s on ext4) and forever on tmpfs, where pages are never written back. Hashing
everything costs 1.7 s per 1,000 fused 480x640 pairs (benchmarks/README.md, "Resuming").
"""
import hashlib


def content_hash(data):
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def file_hash(path):
    """The hash of a file's bytes now; None if it cannot be read."""
    try:
        with open(path, "rb") as handle:
            return content_hash(handle.read())
    except OSError:
        return None

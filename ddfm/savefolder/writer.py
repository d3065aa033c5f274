"""One run's writes into its save folder: journal lines, images, failures (kept in memory too,
for run.json when the journal cannot take them)."""
from ddfm.files import write_atomic
from ddfm.savefolder import journal, layout as folder
from ddfm.savefolder.hashes import content_hash


class RunJournal:
    def __init__(self, layout, run_id, key, log):
        self.layout, self.run_id, self.key, self.log = layout, run_id, key, log
        self.failed = {}

    def write(self, event, **fields):
        journal.append(self.layout.journal, {"event": event, "run": self.run_id, **fields})

    def write_image(self, stem, png, seconds, sources, source_hashes, made_with=None):
        """Journal the image with its hashes just before it is renamed into recon/, then remove
        the earlier images of its stem that --overwrite runs set aside: they are replaced now."""
        name = f"{stem}.png"
        line = dict(stem=stem, file=name, key=self.key, seconds=seconds, sources=sources,
                    source_hashes=source_hashes, hash=content_hash(png), made_with=made_with)
        write_atomic(self.layout.image(stem), lambda handle: handle.write(png),
                     before_publish=lambda: self.write("image", **line))
        for path in self.layout.aside_images() if self.layout.replaced.is_dir() else []:
            if path.stem == stem:
                folder.drop(self.layout, path)

    def fail(self, stem, message):
        self.log(f"error: {message}")
        self.failed[stem] = message
        try:
            self.write("failed", stem=stem, reason=message)
        except OSError:  # the journal is unwritable too: run.json still gets it from memory
            pass

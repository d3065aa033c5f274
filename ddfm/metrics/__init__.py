"""Fusion metrics: both evaluation dialects, their shared definitions, image decoding, folder scoring.

`reference` holds the field's de-facto evaluator (CDDFuse's, alias `cddfuse`) and its `corrected`
twin and dispatches every protocol (`compute_metrics`); `tang` the MATLAB toolkit's dialect;
`common` the definitions every dialect shares; `images` decodes files to the 8-bit grey levels the
evaluators see; `evaluation` scores folders of fused images and writes tables, JSON and CSV. This
package may import NumPy, SciPy, Pillow and `ddfm.common`, never torch, matplotlib, Jinja2, the
driver or `ddfm.present` (which builds on it). The names below are its public API.
"""
from ddfm.metrics.common import cc, en, scd, sd, sf, vifp_ratios
from ddfm.metrics.evaluation import EvaluationError, UsageError, evaluate_folders, evaluate_protocols
from ddfm.metrics.images import read_luma
from ddfm.metrics.reference import (
    ALL_PROTOCOLS,
    METRICS,
    PROTOCOL_ALIASES,
    PROTOCOLS,
    ag,
    canonical_protocol,
    compute_metrics,
    mi,
    mse,
    protocol_metrics,
    psnr,
    qabf,
    ssim,
    vif,
)

__all__ = ["ALL_PROTOCOLS", "METRICS", "PROTOCOL_ALIASES", "PROTOCOLS", "EvaluationError", "UsageError",
           "ag", "canonical_protocol", "cc", "compute_metrics", "en", "evaluate_folders",
           "evaluate_protocols", "mi", "mse", "protocol_metrics", "psnr", "qabf", "read_luma", "scd",
           "sd", "sf", "ssim", "vif", "vifp_ratios"]

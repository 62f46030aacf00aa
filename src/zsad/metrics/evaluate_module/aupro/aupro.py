# Copyright 2026 The zsad authors. Licensed under the Apache License, Version 2.0.
"""AUPRO (area under the per-region-overlap curve) as an `evaluate` metric.

A thin wrapper: the computation is `zsad.metrics.aupro`; calling that function directly is much faster
(no Arrow round trip).
"""

import datasets
import evaluate
import numpy as np
from zsad.metrics import aupro as zsad_aupro

_DESCRIPTION = """
AUPRO is the normalised area under the per-region-overlap (PRO) curve up to a false-positive-rate limit
(0.3 by default), the pixel-level anomaly localisation metric of the MVTec AD benchmark. Ground-truth regions
are the 8-connected components of every mask; PRO(t) is the mean over all regions (of all images) of the
fraction of the region's pixels with score >= t, and FPR(t) the fraction of all normal pixels (pooled over
images) with score >= t. The PRO-vs-FPR curve is integrated with the trapezoid rule up to the limit
(interpolating the last segment) and divided by the limit, giving a value in [0, 1].
mode="exact" (default) is the official threshold-free definition; mode="binned" uses `num_thresholds`
uniform thresholds; mode="cflow" reproduces the AnomalyCLIP / Crane implementation (200 thresholds, kept FPRs
min-max rescaled) for comparison with papers only.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of 2-D float maps): anomaly maps, one per image (higher = more anomalous).
    references (`list` of 2-D binary masks): ground-truth masks of the same sizes (1 = anomalous pixel;
        all zeros for normal images).
    fpr_limit (`float`, defaults to 0.3): FPR integration limit.
    mode (`str`, defaults to "exact"): "exact", "binned" or "cflow".
    num_thresholds (`int`, optional): thresholds for "binned" (default 1000) or "cflow" (default 200).
    score_range (`tuple`, optional): (lo, hi) of the binned thresholds; default: min/max of the maps.
Returns:
    aupro (`float`): AUPRO in [0, 1].
Examples:
    >>> import evaluate, zsad.metrics
    >>> aupro = evaluate.load(zsad.metrics.evaluate_module_path())
    >>> results = aupro.compute(predictions=[[[0.1, 0.9], [0.2, 0.3]]], references=[[[0, 1], [0, 0]]])
    >>> print(results)
    {'aupro': 1.0}
"""

_CITATION = """
@article{bergmann2021mvtec,
  title={The MVTec Anomaly Detection Dataset: A Comprehensive Real-World Dataset for Unsupervised Anomaly Detection},
  author={Bergmann, Paul and Batzner, Kilian and Fauser, Michael and Sattlegger, David and Steger, Carsten},
  journal={International Journal of Computer Vision},
  volume={129},
  number={4},
  pages={1038--1059},
  year={2021}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class AUPRO(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.List(datasets.List(datasets.Value("float32"))),
                    "references": datasets.List(datasets.List(datasets.Value("float32"))),
                }
            ),
            reference_urls=["https://doi.org/10.1007/s11263-020-01400-4"],
            codebase_urls=["https://github.com/zsad/zsad"],
        )

    def _compute(self, predictions, references, fpr_limit=0.3, mode="exact", num_thresholds=None, score_range=None):
        maps = [np.asarray(p, dtype=np.float32) for p in predictions]
        masks = [np.asarray(r, dtype=np.float32) for r in references]
        value = zsad_aupro(
            maps, masks, fpr_limit, mode=mode, num_thresholds=num_thresholds, score_range=score_range
        )
        return {"aupro": float(value)}

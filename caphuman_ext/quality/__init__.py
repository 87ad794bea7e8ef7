"""Quality scores of CapHuman results: identity similarity and head-control errors (CapHuman's Table 1 metrics) of
generated images, per unit, from the extension's own models. The protocol runner that drives a webui is a tool:
`caphuman_tools.quality`."""

from .metrics import code_errors, cosine_similarity, rotation_errors
from .results import FaceScore, ImageScore
from .scorer import Scorer, as_units, score

__all__ = ["FaceScore", "ImageScore", "Scorer", "as_units", "code_errors", "cosine_similarity", "rotation_errors",
           "score"]

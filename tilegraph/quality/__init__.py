"""Quality: seam metrics measured on the output, and the QA report (observes, never mutates)."""

from tilegraph.quality.metrics import delta_e2000, difference_metrics, seam_metrics
from tilegraph.quality.reference import ReferenceChoice, choose_reference
from tilegraph.quality.report import summary_html, write_report

__all__ = [
    "ReferenceChoice",
    "choose_reference",
    "delta_e2000",
    "difference_metrics",
    "seam_metrics",
    "summary_html",
    "write_report",
]

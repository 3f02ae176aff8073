"""Curation ops (mix, filter, dedup, decontaminate, distill, verify, format).

Importing this package registers every op in `data_pipeline.ops.OPS`.
"""

from curation import decontaminate, dedup, distill, filters, format, mix, verify  # noqa: F401

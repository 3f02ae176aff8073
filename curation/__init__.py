"""Curation ops (mix, filter, dedup, decontaminate, distill, verify, select, format).

Importing this package registers every op in `data_pipeline.ops.OPS`.
"""

from curation import decontaminate, dedup, distill, filters, format, mix, select, verify  # noqa: F401

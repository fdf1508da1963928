"""Similar-case retrieval: lesion descriptors (deep + radiomics), the on-disk case library, exact search
and retrieval metrics (precision@k, mAP@k). ``descriptors`` imports torch; the others do not."""

from medcnncad.retrieval.evaluate import average_precision_at_k, leave_one_out, precision_at_k
from medcnncad.retrieval.index import ExactIndex
from medcnncad.retrieval.library import DEFAULT_FEATURES, FEATURES, Library, LibraryError, Neighbour
from medcnncad.retrieval.versions import DESCRIPTOR_VERSION

__all__ = ["DESCRIPTOR_VERSION", "DEFAULT_FEATURES", "FEATURES", "ExactIndex", "Library", "LibraryError", "Neighbour",
           "average_precision_at_k", "leave_one_out", "precision_at_k"]

from siirl_core.models.factory import ARCHITECTURES, SIZES, count_parameters, create_tiny_model
from siirl_core.models.loading import load_causal_lm, load_tokenizer

__all__ = ["ARCHITECTURES", "SIZES", "count_parameters", "create_tiny_model", "load_causal_lm", "load_tokenizer"]

"""Few-shot methods, one small file each, found through a registry that fails loudly."""

from models.methods.base import FewShotMethod, MethodOutput
from models.methods.registry import available_methods, create_method, usable_methods

__all__ = ["FewShotMethod", "MethodOutput", "available_methods", "create_method",
           "usable_methods"]

"""First-order MAML (Finn et al., ICML 2017, section 5.2; Nichol et al., arXiv:1803.02999).

MAML without the second-order terms: the inner-loop gradients are treated as constants,
so the query loss's gradient at the adapted parameters is applied to the
initialisation. Same model and shapes as `maml`.
"""

from __future__ import annotations

from models.methods.base import register_method
from models.methods.maml import MAML


@register_method
class FOMAML(MAML):
    name = "fomaml"
    first_order = True

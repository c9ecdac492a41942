"""The model zoo: ``get_model(name, **kwargs)``.

Registered names: ``'3c3d'``, ``'allcnnc'`` (DeepOBS, exact), ``'mlp'``, ``'deep_fc'``,
``'convnet'``. Importing this package registers them all.
"""

from jaxnorm.models import all_cnn_c, convnet, mlp, three_c_three_d  # noqa: F401  (registration)
from jaxnorm.models.all_cnn_c import AllCNNC
from jaxnorm.models.convnet import ConvNet
from jaxnorm.models.mlp import MLP, DeepFC
from jaxnorm.models.registry import get_model, model_names, register_model
from jaxnorm.models.three_c_three_d import ThreeCThreeD

__all__ = ["get_model", "model_names", "register_model", "ThreeCThreeD", "AllCNNC", "MLP", "DeepFC", "ConvNet"]

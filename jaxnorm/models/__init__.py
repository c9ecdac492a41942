"""The model zoo: ``get_model(name, **kwargs)``.

Registered names: ``'3c3d'``, ``'allcnnc'`` (DeepOBS, exact), ``'mlp'``, ``'deep_fc'``,
``'convnet'`` (images, or sequences ``(batch, length, channels)``), and the MNIST-1D
baselines ``'mnist1d_linear'``, ``'mnist1d_mlp'``, ``'mnist1d_cnn'``, ``'mnist1d_gru'``
(Greydanus & Kobak, ICML 2024). Importing this package registers them all.
"""

from jaxnorm.models import all_cnn_c, convnet, mlp, three_c_three_d  # noqa: F401  (registration; mnist1d: below)
from jaxnorm.models.all_cnn_c import AllCNNC
from jaxnorm.models.convnet import ConvNet
from jaxnorm.models.mlp import MLP, DeepFC
from jaxnorm.models.mnist1d import MNIST1DCNN, MNIST1DGRU, MNIST1DMLP, MNIST1DLinear
from jaxnorm.models.registry import get_model, model_names, register_model
from jaxnorm.models.three_c_three_d import ThreeCThreeD

__all__ = ["get_model", "model_names", "register_model", "ThreeCThreeD", "AllCNNC", "MLP", "DeepFC", "ConvNet",
           "MNIST1DLinear", "MNIST1DMLP", "MNIST1DCNN", "MNIST1DGRU"]

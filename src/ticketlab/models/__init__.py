"""Model zoo: published image classifiers, built by name, each with its training recipe.

    from ticketlab.models import build_model, model_recipe
    net = build_model("cifar_resnet_20", num_classes=10, in_channels=3, image_size=32)

Every model is made of torch.nn Conv2d / Linear / BatchNorm2d / pooling / activation modules, so
prunable layers can be found with isinstance, and every model's output layer is called `fc`.
Register your own with the `register_model` decorator.
"""

from ticketlab.models import convnet, fastnet, lenet, resnet, vgg, wide_resnet  # noqa: F401  (registration)
from ticketlab.models.registry import (
    MODELS,
    build_model,
    list_models,
    model_augment,
    model_options,
    model_recipe,
    model_revision,
    register_model,
)

__all__ = [
    "MODELS", "build_model", "list_models", "model_augment", "model_options", "model_recipe", "model_revision",
    "register_model",
]

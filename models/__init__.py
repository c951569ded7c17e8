"""Model definitions (one architecture family per module) and rebuilding from a spec.

A run's config.json stores its model as a spec, {"name": ..., **keyword arguments}, so any
script can rebuild the network from a run directory.
"""


def build_model(spec, load_pretrained=True):
    """The model a spec describes.

    load_pretrained=False builds the same architecture without reading pretrained weights
    (ImageNet or a file): for rebuilding a trained run whose checkpoint holds every weight.
    """
    spec = dict(spec)
    name = spec.pop("name")
    if name == "resnet18_cifar":
        from models.resnet import resnet18
        return resnet18(**spec)
    if name == "torchvision_resnet18":
        from models.transfer import build_transfer_model, freeze_first_children
        if load_pretrained:
            return build_transfer_model(**spec)
        frozen = spec.pop("freeze_children", 0)
        model = build_transfer_model(**{**spec, "weights": "none"})
        freeze_first_children(model, frozen)  # same modules (and state-dict keys) as trained
        return model
    raise ValueError(f"unknown model {name!r}")

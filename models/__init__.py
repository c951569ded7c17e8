"""Model definitions (one architecture family per module) and rebuilding from a spec.

A run's config.json stores its model as a spec, {"name": ..., **keyword arguments}, so any
script can rebuild the network from a run directory.
"""


def build_model(spec):
    spec = dict(spec)
    name = spec.pop("name")
    if name == "resnet18_cifar":
        from models.resnet import resnet18
        return resnet18(**spec)
    if name == "torchvision_resnet18":
        from models.transfer import build_transfer_model
        return build_transfer_model(**spec)
    raise ValueError(f"unknown model {name!r}")

"""Model definitions (one architecture family per module) and rebuilding from a spec.

A run's config.json stores its model as a spec, {"name": ..., **keyword arguments}, so any
script can rebuild the network from a run directory.
"""


def build_model(spec, state_dict=None):
    """The model a spec describes, its backbone loaded from `state_dict` where given.

    A spec's "weights" only names where pretrained weights come from ("none", "imagenet" or a
    path): the caller reads them. Without a state dict the architecture is the same, e.g. to
    load a trained run's checkpoint into.
    """
    spec = dict(spec)
    name = spec.pop("name")
    if name == "resnet18_cifar":
        from models.resnet import resnet18
        return resnet18(**spec)
    if name == "torchvision_resnet18":
        from models.transfer import build_transfer_model
        spec.pop("weights", None)
        return build_transfer_model(**spec, state_dict=state_dict)
    raise ValueError(f"unknown model {name!r}")

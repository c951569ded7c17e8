"""Model definitions (one architecture family per module) and rebuilding from a spec: a run's
config.json stores its model as {"name": ..., **keyword arguments}."""


def _few(keys, most=4):
    keys = list(keys)
    return ", ".join(keys[:most]) + (f" and {len(keys) - most} more" if len(keys) > most else "")


def state_dict_mismatch(expected, given):
    """Why state dict `given` does not fit a model whose state dict is `expected`, on one
    line (missing and unexpected keys, differing shapes); "" when it fits."""
    missing = [key for key in expected if key not in given]
    unexpected = [key for key in given if key not in expected]
    reshaped = [f"{key} {tuple(given[key].shape)} in the file, {tuple(value.shape)} in the model"
                for key, value in expected.items()
                if key in given and given[key].shape != value.shape]
    return "; ".join(filter(None, [missing and f"missing keys {_few(missing)}",
                                   unexpected and f"unexpected keys {_few(unexpected)}",
                                   reshaped and f"shapes differ for {_few(reshaped, 2)}"]))


def build_model(spec, state_dict=None):
    """The model a spec describes, its backbone from `state_dict` where given (a spec's
    "weights" only names where they come from: the caller reads them)."""
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

"""Class-balanced validation split and training subset.

The validation set is taken out of the training set, so the test set is never used to
choose a model or stop training. Both draws are seeded and class-balanced: each class
gives count // K images, and the first count % K classes one more.
"""
import torch

from engine.errors import UserError


def balanced_indices(labels, num_classes, count, generator, what):
    """Indices of `count` images, as equal per class as possible, each class shuffled."""
    chosen = []
    for label in range(num_classes):
        quota = count // num_classes + (1 if label < count % num_classes else 0)
        members = torch.nonzero(labels == label).flatten()
        if quota > len(members):
            raise UserError(f"{what} of {count} needs {quota} images of class {label} but there "
                            f"are only {len(members)}: choose a smaller value")
        chosen.append(members[torch.randperm(len(members), generator=generator)[:quota]])
    return torch.cat(chosen).sort().values


def split_validation(data, val_size, seed):
    """Return (train, val): val_size class-balanced images held out of `data`."""
    if val_size >= len(data):
        raise UserError(f"--val-size {val_size} leaves no training images (the training set has "
                        f"{len(data)}): choose a smaller --val-size")
    generator = torch.Generator().manual_seed(seed)
    val_index = balanced_indices(data.labels, len(data.classes), val_size, generator, "--val-size")
    keep = torch.ones(len(data), dtype=torch.bool)
    keep[val_index] = False
    return data.select(torch.nonzero(keep).flatten()), data.select(val_index)


def take_subset(data, size, seed):
    """A class-balanced training subset of `size` images."""
    if size > len(data):
        raise UserError(f"--subset {size} is larger than the {len(data)} training images left "
                        f"after the validation split: choose --subset {len(data)} or less")
    generator = torch.Generator().manual_seed(seed + 1)  # independent of the validation draw
    return data.select(balanced_indices(data.labels, len(data.classes), size, generator, "--subset"))

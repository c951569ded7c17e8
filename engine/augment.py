"""Batched image augmentation on the device, with independent random parameters per image.

torchvision.transforms.v2, given a batch, draws one set of parameters for the whole batch;
per-image transforms on the CPU keep a GPU idle. So each operation here is split in two:
  *_params(batch_size, generator, ...)  draws every image's parameters at once (tensors);
  apply_*(images, params...)            applies them to the whole batch in a few kernels.
The split lets tests compare image i with torchvision's functional op given the same
parameters. Images are (B, C, H, W) uint8 or float tensors on any device; the generator
lives on the same device as the images.
"""
import torch
import torch.nn.functional as F


# --- random crop with zero padding (the standard CIFAR augmentation) ---------------------

def crop_params(batch_size, padding, generator, device):
    """Top-left corner of each crop inside the padded image: uniform in [0, 2*padding]."""
    tops = torch.randint(0, 2 * padding + 1, (batch_size,), generator=generator, device=device)
    lefts = torch.randint(0, 2 * padding + 1, (batch_size,), generator=generator, device=device)
    return tops, lefts


def apply_crop(images, tops, lefts, padding):
    """Crop each image of the zero-padded batch at its own (top, left); output keeps H x W."""
    batch, channels, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    rows = (tops[:, None] + torch.arange(height, device=images.device))[:, None, :, None]
    cols = (lefts[:, None] + torch.arange(width, device=images.device))[:, None, None, :]
    batch_index = torch.arange(batch, device=images.device)[:, None, None, None]
    channel_index = torch.arange(channels, device=images.device)[None, :, None, None]
    return padded[batch_index, channel_index, rows, cols]


def random_crop(images, padding, generator):
    tops, lefts = crop_params(images.shape[0], padding, generator, images.device)
    return apply_crop(images, tops, lefts, padding)


# --- horizontal flip ---------------------------------------------------------------------

def flip_params(batch_size, p, generator, device):
    """Which images to flip: each independently with probability p."""
    return torch.rand(batch_size, generator=generator, device=device) < p


def apply_flip(images, flip_mask):
    return torch.where(flip_mask[:, None, None, None], images.flip(-1), images)


def random_flip(images, p, generator):
    return apply_flip(images, flip_params(images.shape[0], p, generator, images.device))


# --- pipelines ---------------------------------------------------------------------------

class CropFlip:
    """The standard CIFAR training augmentation: 4-pixel padded random crop + flip."""

    per_image = False  # batched: parameters drawn per image, applied to the whole batch

    def __init__(self, padding=4, flip_p=0.5):
        self.padding = padding
        self.flip_p = flip_p

    def __call__(self, images, labels, generator):
        images = random_crop(images, self.padding, generator)
        return random_flip(images, self.flip_p, generator), labels

    def __repr__(self):
        return f"CropFlip(padding={self.padding}, flip_p={self.flip_p})"

"""Batched augmentation on the device, with independent random parameters per image.

*_params draws them on the device, apply_* transforms the batch (so tests can compare image i
with torchvision's op given the same parameters), random_* chains both; none waits for the host.
Images are un-normalised and keep their dtype; rounding, arms and magnitudes: docs/parts.md,
part (c).
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF


# --- shared helpers ------------------------------------------------------------------------

def _max_value(dtype):
    """White in an un-normalised image of this dtype."""
    return 1.0 if dtype.is_floating_point else torch.iinfo(dtype).max


def _as_float(images):
    """float32 copy of integer images; float ones as they are, so never write to the result."""
    return images if images.is_floating_point() else images.to(torch.float32)


def _round_back(result, like):
    """Back to like's dtype, rounding to the nearest level as torchvision's resize/rotate."""
    return result if like.is_floating_point() else result.round().to(like.dtype)


def _per_image(values):
    return values[:, None, None, None]


def _uniform(low, high, shape, generator, device):
    return low + (high - low) * torch.rand(shape, generator=generator, device=device)


def _randint_below(bounds, generator):
    """torch.randint with a bound per image: one integer in [0, bounds[i])."""
    draws = torch.rand(bounds.shape, generator=generator, device=bounds.device)
    return torch.minimum((draws * bounds).long(), bounds - 1)  # rand * n can round up to n


def _first_fit(fits, *candidates):
    """torchvision's "try up to N times" with every try drawn at once: whether any of the
    last dim's tries fits, and each candidate's value at the first that does."""
    index = fits.int().argmax(dim=-1, keepdim=True)
    return (fits.any(dim=-1), *(values.gather(-1, index).squeeze(-1) for values in candidates))


def _box_draws(batch_size, attempts, area, scale, ratio, generator, device):
    """(sqrt(a * r), sqrt(a / r)), rounded, per image and try: a uniform in scale * area,
    log r uniform in log(ratio), as RandomResizedCrop and RandomErasing draw their boxes."""
    shape = (batch_size, attempts)
    areas = area * _uniform(scale[0], scale[1], shape, generator, device)
    aspects = torch.exp(_uniform(math.log(ratio[0]), math.log(ratio[1]), shape, generator, device))
    return torch.sqrt(areas * aspects).round().long(), torch.sqrt(areas / aspects).round().long()


def _clipped_span(starts, ends, limit):
    """[starts, ends) clipped to [0, limit), as (start, length)."""
    starts = starts.clamp(0, limit)
    return starts, ends.clamp(0, limit) - starts


def _box_mask(tops, lefts, heights, widths, height, width):
    """(B, 1, H, W) bool: True inside each image's box; a box of size 0 masks nothing."""
    rows = torch.arange(height, device=tops.device)[None, :]
    cols = torch.arange(width, device=tops.device)[None, :]
    inside_rows = (rows >= tops[:, None]) & (rows < (tops + heights)[:, None])
    inside_cols = (cols >= lefts[:, None]) & (cols < (lefts + widths)[:, None])
    return (inside_rows[:, :, None] & inside_cols[:, None, :])[:, None]


# --- random crop with zero padding, horizontal flip (the standard CIFAR augmentation) ------

def crop_params(batch_size, padding, generator, device):
    """Top-left corner of each crop inside the padded image."""
    tops = torch.randint(0, 2 * padding + 1, (batch_size,), generator=generator, device=device)
    lefts = torch.randint(0, 2 * padding + 1, (batch_size,), generator=generator, device=device)
    return tops, lefts


def apply_crop(images, tops, lefts, padding):
    """Crop each image of the zero-padded batch at its own (top, left); output keeps H x W."""
    height, width = images.shape[-2:]
    windows = F.pad(images, [padding] * 4).unfold(2, height, 1).unfold(3, width, 1)  # a view
    return windows[torch.arange(len(images), device=images.device), :, tops, lefts]


def random_crop(images, padding, generator):
    tops, lefts = crop_params(len(images), padding, generator, images.device)
    return apply_crop(images, tops, lefts, padding)


def flip_params(batch_size, p, generator, device):
    """Which images to flip: each independently with probability p."""
    return torch.rand(batch_size, generator=generator, device=device) < p


def apply_flip(images, flip_mask):
    return torch.where(_per_image(flip_mask), images.flip(-1), images)


def random_flip(images, p, generator):
    return apply_flip(images, flip_params(len(images), p, generator, images.device))


# --- rotation ------------------------------------------------------------------------------

def rotation_params(batch_size, generator, device, degrees=15.0):
    """Angle of each image in degrees, uniform in [-degrees, degrees] (or in a given pair)."""
    if isinstance(degrees, (int, float)):
        if degrees < 0:
            raise ValueError(f"degrees must be non-negative, got {degrees}")
        degrees = (-degrees, degrees)
    return _uniform(float(degrees[0]), float(degrees[1]), batch_size, generator, device)


def _rotation_grids(angles, height, width, dtype):
    """grid_sample grids (B, H, W, 2) built as torchvision's rotate builds them (a float64
    matrix, scaled before the product), so that nearest-neighbour ties break alike."""
    device = angles.device
    precise = torch.float32 if device.type == "mps" else torch.float64  # no float64 on MPS
    radians = torch.deg2rad(angles.to(precise) % 360)
    cos, sin, zeros = torch.cos(radians), torch.sin(radians), torch.zeros_like(radians)
    inverse = torch.stack((torch.stack((cos, -sin, zeros), -1),
                           torch.stack((sin, cos, zeros), -1)), dim=1).to(dtype)   # (B, 2, 3)
    half_size = torch.full((2,), 0.5 * width, device=device, dtype=dtype)
    half_size[1] = 0.5 * height  # not torch.tensor([...]): that would wait for the host
    ys, xs = (torch.linspace((1.0 - n) * 0.5, (n - 1.0) * 0.5, n, device=device, dtype=dtype)
              for n in (height, width))
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")  # pixel centres, origin in the middle
    pixels = torch.stack((grid_x, grid_y, torch.ones_like(grid_x)), dim=-1).reshape(-1, 3)
    grids = pixels.expand(len(angles), -1, -1).bmm(inverse.transpose(1, 2) / half_size)
    return grids.reshape(-1, height, width, 2)


def apply_rotation(images, angles, interpolation="bilinear", fill=0.0):
    """Rotate image i by angles[i] degrees counter-clockwise. As torchvision, a ones channel
    gives each pixel's coverage: `fill` blends in by it (bilinear) or below 0.5 (nearest)."""
    if interpolation not in ("bilinear", "nearest"):
        raise ValueError(f"interpolation must be 'bilinear' or 'nearest', got {interpolation!r}")
    channels, height, width = images.shape[1:]
    work = _as_float(images)
    grids = _rotation_grids(angles, height, width, work.dtype)
    sampled = F.grid_sample(torch.cat((work, torch.ones_like(work[:, :1])), dim=1), grids,
                            mode=interpolation, padding_mode="zeros", align_corners=False)
    sampled, coverage = sampled[:, :channels], sampled[:, channels:]
    if interpolation == "nearest":
        return _round_back(sampled.masked_fill(coverage < 0.5, fill), images)
    return _round_back((sampled - fill) * coverage + fill, images)


def random_rotation(images, generator, degrees=15.0, interpolation="bilinear", fill=0.0):
    angles = rotation_params(len(images), generator, images.device, degrees)
    return apply_rotation(images, angles, interpolation, fill)


# --- colour jitter -------------------------------------------------------------------------
# torchvision's formulas with one factor per image, on float "levels" (0..255 for uint8),
# truncated after every step for integer input as torchvision's uint8 kernels do.

BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)  # torchvision ColorJitter's fn_idx codes
IDENTITY = 4  # a slot where an image has no adjustment
JITTER_COMPONENTS = ("brightness", "contrast", "saturation", "hue")


def _hue_step(levels, shifts, integer, bound):
    """Rotate image i's hue by shifts[i] turns, converting as torchvision (x * (1/255) in,
    x * 255.999 truncated out); to RGB by v - c*clamp(min(k, 4-k), 0, 1), k = (n + 6h) mod 6."""
    rgb = levels * (1.0 / bound) if integer else levels
    red, green, blue = rgb.unbind(dim=-3)
    value = rgb.amax(dim=-3)
    chroma = value - rgb.amin(dim=-3)
    safe_chroma = chroma.clamp(min=torch.finfo(chroma.dtype).tiny)  # grey: numerators are 0
    sector = torch.where(value == red, (green - blue) / safe_chroma,
                         torch.where(value == green, (blue - red) / safe_chroma + 2.0,
                                     (red - green) / safe_chroma + 4.0))
    hue = (sector / 6.0 + 1.0).fmod(1.0)
    hue = (hue + shifts.to(hue.dtype)[:, None, None]).remainder(1.0)
    offsets = torch.arange(5.0, 0.0, -2.0, device=hue.device, dtype=hue.dtype)[:, None, None]
    k = torch.add(offsets, hue.unsqueeze(-3), alpha=6.0).remainder(6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)
    out = torch.addcmul(value.unsqueeze(-3), chroma.unsqueeze(-3), ramp, value=-1.0)
    return out.mul(bound + 1.0 - 1e-3).trunc() if integer else out


def _blend_step(levels, ratios, gray_weights, mean_weights, integer, bound):
    """torchvision's _blend r*x + (1 - r)*other with image i's r and other = 0 (brightness; or
    none at r = 1), its mean grey (contrast) or its grey image (saturation): the weights are
    (1 - r) or 0 per image, so one kernel chain serves every image, and rounds alike."""
    red, green, blue = levels.unbind(dim=-3)  # ITU-R 601 luma, in torchvision's arithmetic
    gray = red.mul(0.2989).add_(green, alpha=0.587).add_(blue, alpha=0.114).unsqueeze(-3)
    gray = gray.floor_() if integer else gray
    # addcmul rounds as torchvision's mul(r).add_(other, alpha=1 - r) does; adding 0 is exact
    adjusted = (levels * ratios).addcmul_(gray, gray_weights)
    adjusted = adjusted.addcmul_(gray.mean(dim=(-3, -2, -1), keepdim=True), mean_weights)
    adjusted = adjusted.clamp_(0, bound)
    return adjusted.trunc_() if integer else adjusted


def _jitter_slots(order, with_hue):
    """(B, S) codes per image and slot: each image's n steps in its order, shifted so that its
    hue step falls in the middle slot (n - 1 of 2n - 1), the other slots IDENTITY: hue is then
    computed once for the batch, not at every step. Without hue, the order as it is."""
    if not with_hue:
        return order
    steps = order.shape[1]
    is_hue = order == HUE
    shifts = torch.where(is_hue.any(dim=1), steps - 1 - is_hue.int().argmax(dim=1), 0)
    taken = torch.arange(2 * steps - 1, device=order.device)[None, :] - shifts[:, None]
    inside = (taken >= 0) & (taken < steps)
    return torch.where(inside, order.gather(1, taken.clamp(0, steps - 1)), IDENTITY)


def apply_color_jitter(images, order, brightness=None, contrast=None, saturation=None, hue=None):
    """Image i gets adjustment order[i, k] (a code) at step k, each with image i's factor; a
    None factor leaves it as is. Brightness, contrast and saturation are one blend kernel
    chain per slot for the whole batch, hue one pass (_jitter_slots)."""
    integer, bound = not images.is_floating_point(), _max_value(images.dtype)
    levels = _as_float(images)
    ones = torch.ones(len(images), device=images.device, dtype=levels.dtype)
    table = torch.stack([ones if factor is None else factor.to(levels.dtype)
                         for factor in (brightness, contrast, saturation)] + [ones, ones], dim=1)
    codes = _jitter_slots(order, hue is not None)
    ratios = table.gather(1, codes)
    gray_weights, mean_weights = ((codes == code) * (1.0 - ratios)
                                  for code in (SATURATION, CONTRAST))
    middle = codes.shape[1] // 2
    for slot in range(codes.shape[1]):
        adjusted = _blend_step(levels, *(_per_image(values[:, slot]) for values in
                                         (ratios, gray_weights, mean_weights)),
                               integer, bound)
        if hue is not None and slot == middle:
            adjusted = torch.where(_per_image(codes[:, slot] == HUE),
                                   _hue_step(levels, hue, integer, bound), adjusted)
        levels = adjusted
    return levels.to(images.dtype)


def color_jitter_params(batch_size, generator, device, brightness=0.4, contrast=0.4,
                        saturation=0.4, hue=0.1):
    """{"order": (B, 4) a random permutation of the codes per image, and a (B,) factor per
    component, None where 0 or None (torchvision skips it)}; ranges as ColorJitter's."""
    params = {"order": torch.rand(batch_size, 4, generator=generator, device=device).argsort(dim=1)}
    for name, value in zip(JITTER_COMPONENTS, (brightness, contrast, saturation, hue)):
        params[name] = None
        if value is None or (isinstance(value, (int, float)) and value == 0):
            continue
        if isinstance(value, (int, float)):
            if name == "hue" and not 0 <= value <= 0.5:
                raise ValueError(f"hue must be in [0, 0.5], got {value}")
            value = (-value, value) if name == "hue" else (max(0.0, 1.0 - value), 1.0 + value)
        params[name] = _uniform(float(value[0]), float(value[1]), batch_size, generator, device)
    return params


def random_color_jitter(images, generator, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1):
    params = color_jitter_params(len(images), generator, images.device,
                                 brightness, contrast, saturation, hue)
    return apply_color_jitter(images, **params)


# --- random resized crop ------------------------------------------------------------------

def resized_crop_params(batch_size, height, width, generator, device, scale=(0.35, 1.0),
                        ratio=(3 / 4, 4 / 3), attempts=10):
    """Each image's crop box as torchvision RandomResizedCrop: the first of `attempts` draws
    that fits, else the largest centred crop within `ratio`."""
    widths, heights = _box_draws(batch_size, attempts, height * width, scale, ratio, generator,
                                 device)
    fits = (widths > 0) & (widths <= width) & (heights > 0) & (heights <= height)
    found, heights, widths = _first_fit(fits, heights, widths)
    fallback_height, fallback_width = height, width
    if width / height < min(ratio):
        fallback_height = int(round(width / min(ratio)))
    elif width / height > max(ratio):
        fallback_width = int(round(height * max(ratio)))
    heights = torch.where(found, heights, fallback_height)
    widths = torch.where(found, widths, fallback_width)
    tops = torch.where(found, _randint_below(height - heights + 1, generator),
                       (height - heights) // 2)
    lefts = torch.where(found, _randint_below(width - widths + 1, generator), (width - widths) // 2)
    return tops, lefts, heights, widths


def _crop_resize_axis(starts, lengths, out_length, in_length):
    """grid_sample coordinates (B, out_length) that sample [start, start + length) as
    interpolate(align_corners=False) resizes a crop (edges clamped to the crop)."""
    centres = torch.arange(out_length, device=starts.device, dtype=torch.float32) + 0.5
    source = centres[None, :] * (lengths[:, None] / out_length) - 0.5
    source = torch.minimum(source.clamp(min=0.0), (lengths - 1)[:, None].float()) + starts[:, None]
    return (2.0 * source + 1.0) / in_length - 1.0


def apply_resized_crop(images, tops, lefts, heights, widths, size):
    """Crop image i to its box and resize it to `size` (int or (h, w)), bilinear. No
    antialiasing, unlike torchvision's default: it differs only where a crop is downscaled."""
    out_height, out_width = (size, size) if isinstance(size, int) else size
    height, width = images.shape[-2:]
    xs = _crop_resize_axis(lefts, widths, out_width, width)
    ys = _crop_resize_axis(tops, heights, out_height, height)
    work = _as_float(images)
    grids = torch.stack((xs[:, None, :].expand(-1, out_height, -1),
                         ys[:, :, None].expand(-1, -1, out_width)), dim=-1).to(work.dtype)
    resized = F.grid_sample(work, grids, mode="bilinear", padding_mode="border",
                            align_corners=False)
    return _round_back(resized, images)


def random_resized_crop(images, generator, size=None, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3)):
    """Random crop of each image resized to `size` (default: the input's size)."""
    batch, _, height, width = images.shape
    boxes = resized_crop_params(batch, height, width, generator, images.device, scale, ratio)
    return apply_resized_crop(images, *boxes, size=(height, width) if size is None else size)


# --- deterministic resize and centre crop: the same for every image, so torchvision's ops on
# the batch. An arm that uses them applies them at test time too (eval_transform_for_arm).

def resize(images, size, antialias=True):
    """Bilinear resize of the batch (an int sets the smaller edge)."""
    return TF.resize(images, size, antialias=antialias)


def center_crop(images, size):
    """Central crop of the batch to `size` (int or (h, w))."""
    return TF.center_crop(images, size)


# --- Cutout (DeVries & Taylor 2017) and random erasing (torchvision RandomErasing) -------

def cutout_params(batch_size, height, width, generator, device, size=16):
    """Each image's hole: size x size, centred on any pixel, clipped at the border (the paper's)."""
    centre_rows = torch.randint(0, height, (batch_size,), generator=generator, device=device)
    centre_cols = torch.randint(0, width, (batch_size,), generator=generator, device=device)
    tops, heights = _clipped_span(centre_rows - size // 2, centre_rows - size // 2 + size, height)
    lefts, widths = _clipped_span(centre_cols - size // 2, centre_cols - size // 2 + size, width)
    return tops, lefts, heights, widths


def apply_erase(images, tops, lefts, heights, widths, value=0):
    """Set each image's box (all channels) to `value`; a zero-sized box leaves it unchanged."""
    return images.masked_fill(_box_mask(tops, lefts, heights, widths, *images.shape[-2:]), value)


def random_cutout(images, generator, size=16, value=0):
    batch, _, height, width = images.shape
    boxes = cutout_params(batch, height, width, generator, images.device, size)
    return apply_erase(images, *boxes, value=value)


def erasing_params(batch_size, height, width, generator, device, p=0.5, scale=(0.02, 0.33),
                   ratio=(0.3, 3.3), attempts=10):
    """Each image's box as torchvision RandomErasing draws it: with probability p the first of
    `attempts` boxes strictly inside, else an empty one."""
    heights, widths = _box_draws(batch_size, attempts, height * width, scale, ratio, generator,
                                 device)
    found, heights, widths = _first_fit((heights < height) & (widths < width), heights, widths)
    erase = found & (torch.rand(batch_size, generator=generator, device=device) < p)
    heights, widths = torch.where(erase, heights, 0), torch.where(erase, widths, 0)
    tops = _randint_below(height - heights + 1, generator)
    lefts = _randint_below(width - widths + 1, generator)
    return tops, lefts, heights, widths


def random_erasing(images, generator, p=0.5, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0):
    batch, _, height, width = images.shape
    boxes = erasing_params(batch, height, width, generator, images.device, p, scale, ratio)
    return apply_erase(images, *boxes, value=value)


# --- Gaussian blur ---------------------------------------------------------------------------

def gaussian_blur_params(batch_size, generator, device, sigma=(0.1, 2.0), p=0.5):
    """Each image's sigma (uniform in `sigma`) and whether it is blurred (probability p)."""
    sigmas = _uniform(sigma[0], sigma[1], batch_size, generator, device)
    return sigmas, torch.rand(batch_size, generator=generator, device=device) < p


def apply_gaussian_blur(images, sigmas, blur_mask, kernel_size=3):
    """Blur image i where blur_mask[i] with torchvision's kernel for sigmas[i] (softmax of
    -(x / sigma)^2) and reflect padding: one grouped convolution, a 2-D kernel per image."""
    if kernel_size % 2 == 0 or kernel_size < 1:
        raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
    batch, channels, height, width = images.shape
    work = _as_float(images)
    limit = (kernel_size - 1) / (2.0 * math.sqrt(2.0))
    xs = torch.linspace(-limit, limit, kernel_size, device=images.device, dtype=work.dtype)
    kernels = torch.softmax(-(xs[None, :] / sigmas[:, None].to(work.dtype)) ** 2, dim=1)
    weights = (kernels[:, :, None] * kernels[:, None, :]).repeat_interleave(channels, dim=0)
    half = kernel_size // 2
    padded = F.pad(work, (half, half, half, half), mode="reflect")
    blurred = F.conv2d(padded.reshape(1, batch * channels, height + 2 * half, width + 2 * half),
                       weights[:, None], groups=batch * channels).reshape(images.shape)
    return torch.where(_per_image(blur_mask), _round_back(blurred, images), images)


def random_gaussian_blur(images, generator, kernel_size=3, sigma=(0.1, 2.0), p=0.5):
    sigmas, blur_mask = gaussian_blur_params(len(images), generator, images.device, sigma, p)
    return apply_gaussian_blur(images, sigmas, blur_mask, kernel_size)


# --- salt-and-pepper and Gaussian noise ----------------------------------------------------

def salt_pepper_params(batch_size, height, width, generator, device, amount=0.05):
    """(salt, pepper) masks (B, 1, H, W), each `amount / 2` of the pixels in expectation; one
    mask for all channels, so a hit pixel turns white or black."""
    draws = torch.rand(batch_size, 1, height, width, generator=generator, device=device)
    return draws < amount / 2, (draws >= amount / 2) & (draws < amount)


def apply_salt_pepper(images, salt, pepper):
    """Salt pixels to white (255 or 1.0), pepper pixels to 0: un-normalised images only."""
    return images.masked_fill(pepper, 0).masked_fill(salt, _max_value(images.dtype))


def random_salt_pepper(images, generator, amount=0.05):
    batch, _, height, width = images.shape
    return apply_salt_pepper(images, *salt_pepper_params(batch, height, width, generator,
                                                         images.device, amount))


def gaussian_noise_params(shape, generator, device, std=0.1):
    """Additive noise on the [0, 1] scale for a batch of this shape."""
    return std * torch.randn(shape, generator=generator, device=device)


def apply_gaussian_noise(images, noise):
    """Add noise (on the [0, 1] scale) and clamp; for uint8 it is scaled by 255 and truncated
    to whole levels, as torchvision's gaussian_noise does."""
    if images.is_floating_point():
        return (images + noise.to(images.dtype)).clamp(0.0, 1.0)
    levels = (noise * _max_value(images.dtype)).to(torch.int16)
    return (images + levels).clamp(0, _max_value(images.dtype)).to(images.dtype)


def random_gaussian_noise(images, generator, std=0.1):
    return apply_gaussian_noise(images, gaussian_noise_params(images.shape, generator,
                                                              images.device, std))


# --- MixUp and CutMix -----------------------------------------------------------------------
# Image i is paired with image permutation[i]; soft targets (B, num_classes) put weight lam[i]
# on image i's label and 1 - lam[i] on its partner's, lam drawn per image.

def _mix_labels(labels, permutation, lam, num_classes):
    """Class indices (or soft targets) mixed with the partners': (B, num_classes) float."""
    targets = labels.float() if labels.ndim == 2 else F.one_hot(labels, num_classes).float()
    return lam[:, None] * targets + (1.0 - lam[:, None]) * targets[permutation]


def mixup_params(batch_size, generator, device):
    """(permutation, lam), lam ~ Beta(1, 1) per image: uniform on [0, 1] (torchvision's MixUp
    and CutMix default, alpha = 1)."""
    permutation = torch.randperm(batch_size, generator=generator, device=device)
    return permutation, torch.rand(batch_size, generator=generator, device=device)


def apply_mixup(images, labels, permutation, lam, num_classes):
    work = _as_float(images)
    weights = _per_image(lam).to(work.dtype)
    mixed = (work[permutation] * (1.0 - weights)).addcmul_(work, weights)
    return _round_back(mixed, images), _mix_labels(labels, permutation, lam, num_classes)


def random_mixup(images, labels, num_classes, generator):
    permutation, lam = mixup_params(len(images), generator, images.device)
    return apply_mixup(images, labels, permutation, lam, num_classes)


def cutmix_params(batch_size, height, width, generator, device):
    """(permutation, tops, lefts, heights, widths) as torchvision CutMix draws its box, but per
    image: sides sqrt(1 - lam) * (H, W), lam ~ Beta(1, 1) (uniform), centred anywhere, clipped."""
    permutation, lam = mixup_params(batch_size, generator, device)
    centre_cols = torch.randint(0, width, (batch_size,), generator=generator, device=device)
    centre_rows = torch.randint(0, height, (batch_size,), generator=generator, device=device)
    half_side = 0.5 * torch.sqrt(1.0 - lam)
    half_widths, half_heights = (half_side * width).long(), (half_side * height).long()
    lefts, widths = _clipped_span(centre_cols - half_widths, centre_cols + half_widths, width)
    tops, heights = _clipped_span(centre_rows - half_heights, centre_rows + half_heights, height)
    return permutation, tops, lefts, heights, widths


def apply_cutmix(images, labels, permutation, tops, lefts, heights, widths, num_classes):
    """Paste each partner's box; image i's label weight is the area it keeps (after clipping)."""
    height, width = images.shape[-2:]
    mask = _box_mask(tops, lefts, heights, widths, height, width)
    kept = 1.0 - (heights * widths).float() / (height * width)
    return (torch.where(mask, images[permutation], images),
            _mix_labels(labels, permutation, kept, num_classes))


def random_cutmix(images, labels, num_classes, generator):
    batch, _, height, width = images.shape
    params = cutmix_params(batch, height, width, generator, images.device)
    return apply_cutmix(images, labels, *params, num_classes=num_classes)


# --- pipelines: (images, labels, generator) -> (images, targets) ---------------------------
# per_image: whether the pipeline loops over images (the rest transform whole batches).

@dataclass(frozen=True)
class Identity:
    """No augmentation (the "none" arm, and the eval transform of most arms)."""

    per_image = False

    def __call__(self, images, labels, generator):
        return images, labels


@dataclass(frozen=True)
class CropFlip:
    """The standard CIFAR training augmentation: 4-pixel padded random crop + flip."""

    padding: int = 4
    flip_p: float = 0.5
    per_image = False

    def __call__(self, images, labels, generator):
        images = random_crop(images, self.padding, generator)
        return random_flip(images, self.flip_p, generator), labels


class RandomOp:
    """A batched random_* op with fixed options, e.g. RandomOp(random_rotation, degrees=15)."""

    per_image = False

    def __init__(self, op, **options):
        self.op = op
        self.options = options

    def __call__(self, images, labels, generator):
        return self.op(images, generator=generator, **self.options), labels

    def __repr__(self):
        options = ", ".join(f"{key}={value!r}" for key, value in self.options.items())
        return f"{self.op.__name__}({options})"


class Mixing(RandomOp):
    """A random_* op that mixes images and their labels, e.g. Mixing(random_mixup, ...)."""

    def __call__(self, images, labels, generator):
        return self.op(images, labels, generator=generator, **self.options)


class DeterministicOp(RandomOp):
    """A batched op without randomness, e.g. DeterministicOp(resize, size=24)."""

    def __call__(self, images, labels, generator):
        return self.op(images, **self.options), labels


@dataclass(frozen=True)
class PerImageTorchvision:
    """A torchvision.transforms.v2 transform, image by image on a CPU copy (AutoAugment and kin),
    its global RNG seeded from `generator` in fork_rng: reproducible, the caller's state kept."""

    transform: object
    per_image = True

    def __call__(self, images, labels, generator):
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator, device=generator.device))
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            augmented = torch.stack([self.transform(image) for image in images.cpu()])
        return augmented.to(images.device), labels

    def __repr__(self):
        return f"PerImageTorchvision({self.transform!r})"


class Compose:
    """Pipelines one after the other, e.g. Compose(CropFlip(), RandomOp(random_cutout))."""

    def __init__(self, *transforms):
        self.transforms = transforms
        self.per_image = any(getattr(transform, "per_image", False) for transform in transforms)

    def __call__(self, images, labels, generator):
        for transform in self.transforms:
            images, labels = transform(images, labels, generator)
        return images, labels

    def __repr__(self):
        return f"Compose({', '.join(repr(transform) for transform in self.transforms)})"


# --- the augmentation study's arms ---------------------------------------------------------
# name -> factory(num_classes, size) -> pipeline, for square images of side `size`; the
# magnitudes suit 32x32 CIFAR images (docs/parts.md, part (c), says why each).

def _shrink_and_back(first, size):
    """first (resize or center_crop) to 3/4 of the side, then resized back (32 -> 24 -> 32)."""
    return Compose(DeterministicOp(first, size=round(0.75 * size)),
                   DeterministicOp(resize, size=size))


ARMS = {
    "none": lambda classes, size: Identity(),
    # the report's nine, each alone
    "rotation": lambda classes, size: RandomOp(random_rotation, degrees=15.0),
    "flip": lambda classes, size: RandomOp(random_flip, p=0.5),
    "color_jitter": lambda classes, size: RandomOp(
        random_color_jitter, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1),
    "random_resized_crop": lambda classes, size: RandomOp(
        random_resized_crop, size=size, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3)),
    "resize": lambda classes, size: _shrink_and_back(resize, size),            # lower resolution
    "center_crop": lambda classes, size: _shrink_and_back(center_crop, size),  # 1.33x zoom
    "cutout": lambda classes, size: RandomOp(random_cutout, size=size // 2),
    "gaussian_blur": lambda classes, size: RandomOp(
        random_gaussian_blur, kernel_size=3, sigma=(0.1, 2.0), p=0.5),
    "salt_pepper": lambda classes, size: RandomOp(random_salt_pepper, amount=0.05),
    # the usual CIFAR recipe
    "standard": lambda classes, size: CropFlip(),
    # extras
    "gaussian_noise": lambda classes, size: RandomOp(random_gaussian_noise, std=0.1),
    "random_erasing": lambda classes, size: RandomOp(
        random_erasing, p=0.5, scale=(0.02, 0.33), ratio=(0.3, 3.3)),
    "mixup": lambda classes, size: Mixing(random_mixup, num_classes=classes),
    "cutmix": lambda classes, size: Mixing(random_cutmix, num_classes=classes),
    "autoaugment": lambda classes, size: PerImageTorchvision(
        T.AutoAugment(T.AutoAugmentPolicy.CIFAR10)),
    "randaugment": lambda classes, size: PerImageTorchvision(T.RandAugment()),
    "trivialaugment": lambda classes, size: PerImageTorchvision(T.TrivialAugmentWide()),
}

# Arms whose transform is deterministic and so must be applied at test time too.
DETERMINISTIC_ARMS = ("resize", "center_crop")


def eval_transform_for_arm(name, image_size=32):
    """Val/test transform: a deterministic arm's own (it changes every image), else Identity()."""
    if name not in ARMS:
        raise ValueError(f"unknown augmentation arm {name!r}: choose from {', '.join(ARMS)}")
    return ARMS[name](None, image_size) if name in DETERMINISTIC_ARMS else Identity()


def arm_transforms(name, num_classes, image_size=32):
    """(train_augment, eval_augment) for engine.training.Run, which applies eval_augment to every
    split: a deterministic arm is only eval_augment, or training images would get it twice."""
    evaluate = eval_transform_for_arm(name, image_size)
    if name in DETERMINISTIC_ARMS:
        return None, evaluate
    return ARMS[name](num_classes, image_size), None

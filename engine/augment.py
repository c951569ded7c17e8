"""Batched image augmentation on the device, with independent random parameters per image.

torchvision.transforms.v2, given a batch, draws one set of parameters for the whole batch;
per-image transforms on the CPU keep a GPU idle. So each operation here is split in two:
  *_params(batch_size, generator, device, ...)  draws every image's parameters at once (tensors);
  apply_*(images, params...)                    applies them to the whole batch in a few kernels;
and random_*(images, ..., generator) chains the two. The split lets tests compare image i
with torchvision's functional op given the same parameters. Images are (B, C, H, W) uint8
or float tensors on any device; the generator lives on the same device as the images.
Nothing here synchronises with the host (no .item(), no boolean indexing), except the
per-image torchvision pipelines at the end.

Conventions, as in torchvision.transforms.v2.functional:
- the output keeps the input's dtype; value ranges are [0, 255] for uint8, [0, 1] for float;
- geometric ops and mixing compute in float and round back to uint8, colour ops truncate
  (torchvision's `_blend` does `.to(uint8)`), so a uint8 result equals torchvision's or is
  within a level or two of it (tests/test_augment.py states each tolerance and why);
- images are un-normalised: salt is 255 (uint8) or 1.0 (float), pepper and fill are 0.

Default magnitudes (also the ARMS settings, chosen for 32x32 CIFAR images):
  rotation        +-15 degrees, bilinear, fill 0
  flip            p = 0.5
  colour jitter   brightness 0.4, contrast 0.4, saturation 0.4, hue 0.1, random order per image
  resized crop    scale (0.35, 1), ratio (3/4, 4/3): at 32 px a smaller crop keeps too little
  Cutout          one 16x16 hole (DeVries & Taylor 2017, CIFAR-10), p = 1
  Gaussian blur   kernel 3, sigma (0.1, 2.0), p = 0.5 (kernel 3 because 32 px images are small)
  salt & pepper   amount 0.05 of the pixels (scikit-image's default), half salt, half pepper
  Gaussian noise  std 0.1 on the [0, 1] scale (torchvision's GaussianNoise default)
  random erasing  torchvision's RandomErasing defaults: p 0.5, scale (0.02, 0.33), ratio (0.3, 3.3)
  MixUp / CutMix  alpha 1.0 (the CIFAR settings of Zhang et al. 2018 and Yun et al. 2019)
"""
import math

import torch
import torch.nn.functional as F
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF


# --- shared helpers ------------------------------------------------------------------------

def _max_value(dtype):
    """The brightest value of an un-normalised image of this dtype."""
    return 1.0 if dtype.is_floating_point else torch.iinfo(dtype).max


def _as_float(images):
    """The batch to compute in: float inputs as they are, integer ones as float32.
    Callers never write into it in place, so a float input is not copied."""
    return images if images.is_floating_point() else images.to(torch.float32)


def _round_back(result, like):
    """Geometric ops and mixing round to the nearest level, as torchvision's resize/rotate do.
    Their results are convex combinations of valid values, so no clamp is needed."""
    return result if like.is_floating_point() else result.round_().to(like.dtype)


def _per_image(mask_or_values):
    """(B,) -> (B, 1, 1, 1), to broadcast one value per image over (B, C, H, W)."""
    return mask_or_values[:, None, None, None]


def _choose(mask, if_true, if_false):
    """Image i of the result is if_true[i] where mask[i], else if_false[i]."""
    if if_true.dtype == if_false.dtype and if_true.shape == if_false.shape:
        words_true, words_false = _as_words(if_true), _as_words(if_false)
        if words_true is not None and words_false is not None:
            chosen = torch.where(mask[:, None], words_true, words_false)
            return chosen.view(if_true.dtype).view(if_true.shape)
    return torch.where(_per_image(mask), if_true, if_false)


def _as_words(images):
    """Each image's bytes as int64 words, (B, N), or None if the layout does not allow it.

    Choosing whole images needs no per-pixel arithmetic, and where() on CPU costs per
    element: on 8-byte words a uint8 batch is chosen about 8x faster.
    """
    bytes_per_image = images[0].numel() * images.element_size() if len(images) else 0
    if bytes_per_image == 0 or bytes_per_image % 8 or not images.is_contiguous():
        return None
    return images.view(len(images), -1).view(torch.int64)


def _fill(images, mask, value):
    """images with `value` wherever mask (B, 1, H, W) is True, on every channel.

    Arithmetic rather than masked_fill or where, which are several times slower on CPU
    with a mask broadcast over channels.
    """
    filled = images * ~mask
    return filled if value == 0 else filled.add_(mask.to(images.dtype) * value)


def _uniform(low, high, shape, generator, device):
    return low + (high - low) * torch.rand(shape, generator=generator, device=device)


def _randint_below(bounds, generator):
    """One integer in [0, bounds[i]) per image, for bounds that differ between images."""
    draws = torch.rand(bounds.shape, generator=generator, device=bounds.device)
    # rand < 1, but rand * n can round up to n in float32: clamp.
    return torch.minimum((draws * bounds).long(), bounds - 1)


def _as_range(value, name):
    """A number v means (-v, v), a pair means itself (as torchvision's degrees argument)."""
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"{name} must be non-negative, got {value}")
        return (-float(value), float(value))
    low, high = value
    return float(low), float(high)


def _first_true(flags):
    """Index of the first True along the last dim, and whether there was one.

    Vectorises torchvision's "try up to 10 times" loops: every attempt is drawn at once.
    """
    return flags.int().argmax(dim=-1), flags.any(dim=-1)


def _take(values, index):
    """values[i, index[i]] for (B, T) values and (B,) index."""
    return values.gather(1, index[:, None]).squeeze(1)


def _box_mask(tops, lefts, heights, widths, height, width):
    """(B, 1, H, W) bool: True inside each image's box; a box of size 0 masks nothing."""
    rows = torch.arange(height, device=tops.device)[None, :]
    cols = torch.arange(width, device=tops.device)[None, :]
    inside_rows = (rows >= tops[:, None]) & (rows < (tops + heights)[:, None])
    inside_cols = (cols >= lefts[:, None]) & (cols < (lefts + widths)[:, None])
    return (inside_rows[:, :, None] & inside_cols[:, None, :])[:, None]


def _pixel_grid(height, width, device, dtype):
    """(H*W, 3) homogeneous pixel coordinates, origin at the image centre (torchvision's)."""
    def centred(length):
        return torch.linspace((1.0 - length) * 0.5, (length - 1.0) * 0.5, length, device=device,
                              dtype=dtype)

    ys, xs = centred(height), centred(width)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((grid_x, grid_y, torch.ones_like(grid_x)), dim=-1).reshape(-1, 3)


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
    # Every possible crop as a view (B, C, tops, lefts, H, W), no copy; indexing it with one
    # (top, left) per image copies whole crops, 5x faster than per-pixel index tensors.
    windows = padded.unfold(2, height, 1).unfold(3, width, 1)
    return windows[torch.arange(batch, device=images.device), :, tops, lefts]


def random_crop(images, padding, generator):
    tops, lefts = crop_params(images.shape[0], padding, generator, images.device)
    return apply_crop(images, tops, lefts, padding)


# --- horizontal flip ---------------------------------------------------------------------

def flip_params(batch_size, p, generator, device):
    """Which images to flip: each independently with probability p."""
    return torch.rand(batch_size, generator=generator, device=device) < p


def apply_flip(images, flip_mask):
    return _choose(flip_mask, images.flip(-1), images)


def random_flip(images, p, generator):
    return apply_flip(images, flip_params(images.shape[0], p, generator, images.device))


# --- rotation ------------------------------------------------------------------------------

def rotation_params(batch_size, generator, device, degrees=15.0):
    """Angle of each image in degrees, uniform in [-degrees, degrees] (or in a given pair)."""
    low, high = _as_range(degrees, "degrees")
    return _uniform(low, high, batch_size, generator, device)


def _rotation_grids(angles, height, width, dtype):
    """Sampling grids (B, H, W, 2) for grid_sample, built as torchvision's rotate builds them.

    torchvision rotates counter-clockwise about the centre; the grid maps each output pixel
    back to where it comes from, in grid_sample's [-1, 1] coordinates (align_corners=False).
    The matrix is computed in float64 (as torchvision does, in Python floats) and scaled
    before the product, in torchvision's order, so nearest-neighbour ties break the same way.
    """
    precise = torch.float32 if angles.device.type == "mps" else torch.float64  # no float64 on MPS
    radians = torch.deg2rad(angles.to(precise) % 360)
    cos, sin = torch.cos(radians), torch.sin(radians)
    zeros = torch.zeros_like(cos)
    inverse = torch.stack((torch.stack((cos, -sin, zeros), -1),
                           torch.stack((sin, cos, zeros), -1)), dim=1).to(dtype)   # (B, 2, 3)
    to_unit = torch.full((2,), 0.5 * width, device=angles.device, dtype=dtype)
    to_unit[1] = 0.5 * height  # filled on the device: torch.tensor([...]) would sync with the host
    scaled = inverse.transpose(1, 2) / to_unit                                     # (B, 3, 2)
    pixels = _pixel_grid(height, width, angles.device, dtype)                      # (H*W, 3)
    grids = pixels.expand(len(angles), -1, -1).bmm(scaled)                          # (B, H*W, 2)
    return grids.reshape(-1, height, width, 2)


def apply_rotation(images, angles, interpolation="bilinear", fill=0.0):
    """Rotate image i by angles[i] degrees (counter-clockwise), keeping its size.

    Pixels from outside the image get `fill`. As torchvision does with a fill value, a ones
    channel is sampled along with the image and gives each pixel's coverage; a bilinear
    border pixel is then (sampled - fill)*coverage + fill, where `sampled` already counts
    outside pixels as 0: torchvision's formula (a slightly darker rim than zero padding).
    """
    if interpolation not in ("bilinear", "nearest"):
        raise ValueError(f"interpolation must be 'bilinear' or 'nearest', got {interpolation!r}")
    channels, height, width = images.shape[1:]
    work = _as_float(images)
    grids = _rotation_grids(angles, height, width, work.dtype)
    coverage_channel = torch.ones_like(work[:, :1])
    sampled = F.grid_sample(torch.cat((work, coverage_channel), dim=1), grids, mode=interpolation,
                            padding_mode="zeros", align_corners=False)
    sampled, coverage = sampled[:, :channels], sampled[:, channels:]
    if interpolation == "nearest":
        rotated = sampled.masked_fill_(coverage < 0.5, fill)
    else:
        rotated = sampled.sub_(fill).mul_(coverage).add_(fill)  # in place on grid_sample's output
    return _round_back(rotated, images)


def random_rotation(images, generator, degrees=15.0, interpolation="bilinear", fill=0.0):
    angles = rotation_params(images.shape[0], generator, images.device, degrees)
    return apply_rotation(images, angles, interpolation, fill)


# --- colour jitter -------------------------------------------------------------------------
# The four adjustments reproduce torchvision's formulas with one factor per image. They run
# on a float batch holding the input's values ("levels": 0..255 for uint8) and, for integer
# input, truncate after every step as torchvision's uint8 kernels do, so a uint8 result
# matches torchvision given the same factors and order (hue to within one level).

BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)  # torchvision ColorJitter's fn_idx codes
JITTER_COMPONENTS = ("brightness", "contrast", "saturation", "hue")
_IDLE = -1


def _grayscale_levels(levels, integer):
    """ITU-R 601 luma as torchvision computes it, (B, 1, H, W); floored for integer images."""
    red, green, blue = levels.unbind(dim=-3)
    luma = red.mul(0.2989).add_(green, alpha=0.587).add_(blue, alpha=0.114).unsqueeze(-3)
    return luma.floor_() if integer else luma


def _blend_step(levels, codes, factors, integer, bound):
    """Brightness, contrast or saturation, as codes[i] says (_IDLE: unchanged), per image.

    All three are torchvision's _blend, factor*x + (1 - factor)*other, with other = 0
    (brightness), the mean grey level (contrast) or the grey image (saturation), so one
    fused pass does whichever each image needs.
    """
    ratios = torch.ones(codes.shape, device=levels.device, dtype=levels.dtype)
    for code in (BRIGHTNESS, CONTRAST, SATURATION):
        if factors[code] is not None:
            ratios = torch.where(codes == code, factors[code].to(levels.dtype), ratios)
    other = torch.zeros((), device=levels.device, dtype=levels.dtype)
    if factors[CONTRAST] is not None or factors[SATURATION] is not None:
        gray = _grayscale_levels(levels, integer)
        mean = gray.mean(dim=(-3, -2, -1), keepdim=True)
        # mean where contrast, gray where saturation, else 0: weights of exactly 0 and 1
        # select without rounding, and cost a fraction of where() on CPU
        is_contrast = _per_image(codes == CONTRAST).to(levels.dtype)
        is_saturation = _per_image(codes == SATURATION).to(levels.dtype)
        other = gray.mul_(is_saturation).add_(mean * is_contrast)
    ratios = _per_image(ratios)
    # addcmul rounds as torchvision's mul(r).add_(other, alpha=1 - r) does (one fused step).
    # In place on one new tensor: on CPU, every fresh batch-sized temporary costs page faults.
    blended = (levels * ratios).addcmul_(other, 1.0 - ratios).clamp_(0, bound)
    return blended.trunc_() if integer else blended


def _rgb_to_hue(images):
    """Hue in [0, 1) of float RGB in [0, 1], (B, H, W), plus max and max - min (HSV's V, V*S)."""
    red, green, blue = images.unbind(dim=-3)
    maxc, minc = images.amax(dim=-3), images.amin(dim=-3)  # faster than aminmax on dim -3
    chroma = maxc - minc
    # grey pixels (chroma 0) have numerators 0 below, so any positive divisor gives hue 0
    safe_chroma = chroma.clamp(min=torch.finfo(chroma.dtype).tiny)
    sector = torch.where(maxc == red, (green - blue).div_(safe_chroma),
                         torch.where(maxc == green, (blue - red).div_(safe_chroma).add_(2.0),
                                     (red - green).div_(safe_chroma).add_(4.0)))
    return sector.div_(6.0).add_(1.0).fmod_(1.0), maxc, chroma


def _hue_to_rgb(hue, value, chroma):
    """Inverse of _rgb_to_hue in one broadcast: channel n of (R, G, B) uses n = (5, 3, 1).

    Equivalent to torchvision's sector table (v, p, q, t) but without its six-way gather,
    the slow part of its adjust_hue on a batch.
    """
    offsets = torch.arange(5.0, 0.0, -2.0, device=hue.device, dtype=hue.dtype)[:, None, None]
    k = torch.add(offsets, hue.unsqueeze(-3), alpha=6.0).remainder_(6.0)
    ramp = torch.rsub(k, 4.0)
    torch.minimum(k, ramp, out=ramp).clamp_(0.0, 1.0)   # in place: see _blend_step
    return torch.addcmul(value.unsqueeze(-3), chroma.unsqueeze(-3), ramp, value=-1.0, out=ramp)


def _hue_step(levels, shifts, integer, bound):
    """Rotate image i's hue by shifts[i] turns in HSV, through torchvision's dtype conversions
    for integer input (x * (1/255) in, x * 255.999 truncated out)."""
    unit = levels * (1.0 / bound) if integer else levels
    hue, value, chroma = _rgb_to_hue(unit)
    rgb = _hue_to_rgb(hue.add_(shifts.to(hue.dtype)[:, None, None]).remainder_(1.0), value, chroma)
    return rgb.mul_(bound + 1.0 - 1e-3).trunc_() if integer else rgb


def _adjust(images, code, factors):
    """One adjustment for the whole batch, one factor per image, keeping the input's dtype."""
    integer, bound = not images.is_floating_point(), _max_value(images.dtype)
    levels = _as_float(images)
    if code == HUE:
        adjusted = _hue_step(levels, factors, integer, bound)
    else:
        codes = torch.full((len(images),), code, device=images.device)
        only = tuple(factors if index == code else None for index in range(4))
        adjusted = _blend_step(levels, codes, only, integer, bound)
    return adjusted.to(images.dtype)


def adjust_brightness(images, factors):
    """Multiply image i by factors[i] (0 gives black, 1 the original)."""
    return _adjust(images, BRIGHTNESS, factors)


def adjust_contrast(images, factors):
    """Blend image i with its mean grey level by factors[i] (0 gives flat grey)."""
    return _adjust(images, CONTRAST, factors)


def adjust_saturation(images, factors):
    """Blend image i with its grayscale by factors[i] (0 gives grey, 2 doubles saturation)."""
    return _adjust(images, SATURATION, factors)


def adjust_hue(images, factors):
    """Rotate image i's hue by factors[i] turns, factors in [-0.5, 0.5] (HSV, as torchvision)."""
    return _adjust(images, HUE, factors)


def _jitter_range(value, name):
    """torchvision's ColorJitter ranges: b -> [max(0, 1 - b), 1 + b], hue h -> [-h, h]."""
    if value is None or (isinstance(value, (int, float)) and value == 0):
        return None
    if not isinstance(value, (int, float)):
        return float(value[0]), float(value[1])
    if name == "hue":
        if not 0 <= value <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {value}")
        return -float(value), float(value)
    return max(0.0, 1.0 - value), 1.0 + value


def color_jitter_params(batch_size, generator, device, brightness=0.4, contrast=0.4,
                        saturation=0.4, hue=0.1):
    """Per-image factors and a per-image random order of the four adjustments.

    Returns a dict: "order" (B, 4), each row a random permutation of the codes BRIGHTNESS,
    CONTRAST, SATURATION, HUE (0..3, as torchvision's fn_idx); and one (B,) factor tensor
    per component, None for a component switched off (0 or None), as torchvision skips it.
    """
    params = {"order": torch.rand(batch_size, 4, generator=generator, device=device).argsort(dim=1)}
    for name, value in zip(JITTER_COMPONENTS, (brightness, contrast, saturation, hue)):
        bounds = _jitter_range(value, name)
        params[name] = None if bounds is None else _uniform(*bounds, batch_size, generator, device)
    return params


_HUE_SLOT = 3


def _jitter_schedule(order):
    """(B, 7) slots: each image's adjustments before hue go to slots 0-2, hue to slot 3 and
    the rest to slots 4-6, in its own order; _IDLE elsewhere.

    Hue costs several times the other three together, and this way it runs once on the
    batch instead of at each of the four steps, without a host round trip.
    """
    positions = torch.arange(4, device=order.device)[None, :]
    hue_position = (order == HUE).int().argmax(dim=1, keepdim=True)
    slot_of = torch.where(positions < hue_position, positions, positions - hue_position + _HUE_SLOT)
    slots = torch.full((len(order), 7), _IDLE, device=order.device, dtype=order.dtype)
    return slots.scatter_(1, slot_of, order)


def apply_color_jitter(images, order, brightness=None, contrast=None, saturation=None, hue=None):
    """Apply each image's adjustments in its own order (order[i, k] = its k-th adjustment's
    code), with its own factors; None switches a component off."""
    integer, bound = not images.is_floating_point(), _max_value(images.dtype)
    factors = (brightness, contrast, saturation, hue)
    slots = _jitter_schedule(order)
    levels = _as_float(images)
    for slot in range(slots.shape[1]):
        if slot != _HUE_SLOT:
            levels = _blend_step(levels, slots[:, slot], factors, integer, bound)
        elif hue is not None:
            levels = _choose(slots[:, slot] == HUE, _hue_step(levels, hue, integer, bound), levels)
    return levels.to(images.dtype)


def random_color_jitter(images, generator, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1):
    params = color_jitter_params(images.shape[0], generator, images.device,
                                 brightness, contrast, saturation, hue)
    return apply_color_jitter(images, **params)


# --- random resized crop ------------------------------------------------------------------

def resized_crop_params(batch_size, height, width, generator, device, scale=(0.35, 1.0),
                        ratio=(3 / 4, 4 / 3), attempts=10):
    """(tops, lefts, heights, widths) of each image's crop, as torchvision RandomResizedCrop.

    Area fraction uniform in `scale`, log aspect ratio uniform in log(`ratio`); of the
    `attempts` draws per image the first that fits is kept, else the centre crop that
    torchvision falls back to.
    """
    shape = (batch_size, attempts)
    areas = height * width * _uniform(scale[0], scale[1], shape, generator, device)
    aspects = torch.exp(_uniform(math.log(ratio[0]), math.log(ratio[1]), shape, generator, device))
    crop_widths = torch.sqrt(areas * aspects).round().long()
    crop_heights = torch.sqrt(areas / aspects).round().long()
    fits = ((crop_widths > 0) & (crop_widths <= width)
            & (crop_heights > 0) & (crop_heights <= height))
    attempt, found = _first_true(fits)

    fallback_height, fallback_width = _center_crop_fallback(height, width, ratio)
    heights = torch.where(found, _take(crop_heights, attempt), fallback_height)
    widths = torch.where(found, _take(crop_widths, attempt), fallback_width)
    tops = torch.where(found, _randint_below(height - heights + 1, generator),
                       (height - heights) // 2)
    lefts = torch.where(found, _randint_below(width - widths + 1, generator), (width - widths) // 2)
    return tops, lefts, heights, widths


def _center_crop_fallback(height, width, ratio):
    """torchvision's fallback when no attempt fits: the largest centred crop within `ratio`."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        return int(round(width / min(ratio))), width
    if in_ratio > max(ratio):
        return height, int(round(height * max(ratio)))
    return height, width


def _crop_resize_axis(starts, lengths, out_length, in_length):
    """grid_sample coordinates (B, out) sampling [start, start + length) at out_length points.

    Pixel centres map as interpolate(align_corners=False) does, and clamping to the crop's
    first and last pixel reproduces its edge handling, so sampling the full image equals
    cropping then resizing, as torchvision's resized_crop does.
    """
    centres = torch.arange(out_length, device=starts.device, dtype=torch.float32) + 0.5
    source = centres[None, :] * (lengths[:, None] / out_length) - 0.5
    source = torch.minimum(source.clamp(min=0.0), (lengths - 1)[:, None].float()) + starts[:, None]
    return (2.0 * source + 1.0) / in_length - 1.0


def apply_resized_crop(images, tops, lefts, heights, widths, size):
    """Crop image i to its box and resize it to `size` (int or (h, w)), bilinear.

    Unlike torchvision's default this does not antialias, which only matters when a crop
    is larger than the output (downscaling); with a 32 px output from 32 px images, as in
    the CIFAR arms, every crop is upscaled and the two agree.
    """
    out_height, out_width = (size, size) if isinstance(size, int) else size
    height, width = images.shape[-2:]
    xs = _crop_resize_axis(lefts, widths, out_width, width)        # (B, W_out)
    ys = _crop_resize_axis(tops, heights, out_height, height)      # (B, H_out)
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


# --- deterministic resize and centre crop -------------------------------------------------

def resize(images, size, antialias=True):
    """Bilinear resize of the whole batch (torchvision's resize; an int sets the smaller edge).

    Deterministic: an augmentation arm that uses it applies it at train and test time alike
    (see eval_transform_for_arm), otherwise train and test images would differ in kind.
    """
    return TF.resize(images, size, interpolation=T.InterpolationMode.BILINEAR, antialias=antialias)


def center_crop(images, size):
    """Central crop of the whole batch to `size` (int or (h, w)), torchvision's center_crop.

    Deterministic: an augmentation arm that uses it applies it at train and test time alike
    (see eval_transform_for_arm), otherwise train and test images would differ in kind.
    """
    return TF.center_crop(images, size)


# --- Cutout (DeVries & Taylor 2017) -------------------------------------------------------

def cutout_params(batch_size, height, width, generator, device, size=16):
    """(tops, lefts, heights, widths) of each image's hole: a size x size square centred
    anywhere in the image (uniform over pixels) and clipped at the border, as in the paper."""
    centre_rows = torch.randint(0, height, (batch_size,), generator=generator, device=device)
    centre_cols = torch.randint(0, width, (batch_size,), generator=generator, device=device)
    tops, heights = _clipped_span(centre_rows - size // 2, centre_rows - size // 2 + size, height)
    lefts, widths = _clipped_span(centre_cols - size // 2, centre_cols - size // 2 + size, width)
    return tops, lefts, heights, widths


def _clipped_span(starts, ends, limit):
    """[starts, ends) clipped to [0, limit), as (start, length): boxes centred near the
    border lose what falls outside (Cutout, CutMix)."""
    starts = starts.clamp(0, limit)
    return starts, ends.clamp(0, limit) - starts


def apply_erase(images, tops, lefts, heights, widths, value=0):
    """Set each image's box (all channels) to `value`; a zero-sized box leaves it unchanged.
    Shared by Cutout and random erasing, which differ only in how boxes are drawn."""
    return _fill(images, _box_mask(tops, lefts, heights, widths, *images.shape[-2:]), value)


def random_cutout(images, generator, size=16, value=0):
    batch, _, height, width = images.shape
    boxes = cutout_params(batch, height, width, generator, images.device, size)
    return apply_erase(images, *boxes, value=value)


# --- random erasing (torchvision RandomErasing, Zhong et al. 2020) -------------------------

def erasing_params(batch_size, height, width, generator, device, p=0.5, scale=(0.02, 0.33),
                   ratio=(0.3, 3.3), attempts=10):
    """(tops, lefts, heights, widths) as torchvision RandomErasing draws them, per image.

    An image is erased with probability p; of `attempts` (area, aspect) draws the first
    that fits strictly inside is used; an image with no fitting draw, or not chosen, gets
    an empty box (torchvision leaves it unchanged too).
    """
    shape = (batch_size, attempts)
    areas = height * width * _uniform(scale[0], scale[1], shape, generator, device)
    aspects = torch.exp(_uniform(math.log(ratio[0]), math.log(ratio[1]), shape, generator, device))
    box_heights = torch.sqrt(areas * aspects).round().long()
    box_widths = torch.sqrt(areas / aspects).round().long()
    attempt, found = _first_true((box_heights < height) & (box_widths < width))
    erase = found & (torch.rand(batch_size, generator=generator, device=device) < p)
    heights = torch.where(erase, _take(box_heights, attempt), 0)
    widths = torch.where(erase, _take(box_widths, attempt), 0)
    tops = _randint_below(height - heights + 1, generator)
    lefts = _randint_below(width - widths + 1, generator)
    return tops, lefts, heights, widths


def random_erasing(images, generator, p=0.5, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0):
    batch, _, height, width = images.shape
    boxes = erasing_params(batch, height, width, generator, images.device, p, scale, ratio)
    return apply_erase(images, *boxes, value=value)


# --- Gaussian blur ---------------------------------------------------------------------------

def gaussian_blur_params(batch_size, generator, device, sigma=(0.1, 2.0), p=0.5):
    """Each image's sigma (uniform in `sigma`, as torchvision GaussianBlur) and whether it
    is blurred at all (probability p)."""
    sigmas = _uniform(sigma[0], sigma[1], batch_size, generator, device)
    return sigmas, torch.rand(batch_size, generator=generator, device=device) < p


def _gaussian_kernels(sigmas, kernel_size, dtype):
    """(B, K) 1-D kernels by torchvision's formula (softmax of -(x / sigma)^2)."""
    limit = (kernel_size - 1) / (2.0 * math.sqrt(2.0))
    xs = torch.linspace(-limit, limit, kernel_size, device=sigmas.device, dtype=dtype)
    return torch.softmax(-(xs[None, :] / sigmas[:, None].to(dtype)) ** 2, dim=1)


def apply_gaussian_blur(images, sigmas, blur_mask, kernel_size=3):
    """Blur image i with a kernel_size x kernel_size Gaussian of sigma sigmas[i] where
    blur_mask[i]; reflect padding, rounded back to uint8, as torchvision's gaussian_blur.

    One grouped convolution with a 2-D kernel per image and channel (groups = B*C), the
    same kernel and convolution torchvision uses for one image: faster on CPU than two
    separable passes of shifted multiply-adds.
    """
    if kernel_size % 2 == 0 or kernel_size < 1:
        raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
    batch, channels, height, width = images.shape
    work = _as_float(images)
    kernels_1d = _gaussian_kernels(sigmas, kernel_size, work.dtype)
    kernels_2d = kernels_1d[:, :, None] * kernels_1d[:, None, :]              # (B, K, K)
    weights = kernels_2d.repeat_interleave(channels, dim=0)[:, None]           # (B*C, 1, K, K)
    half = kernel_size // 2
    padded = F.pad(work, (half, half, half, half), mode="reflect")
    blurred = F.conv2d(padded.reshape(1, batch * channels, height + 2 * half, width + 2 * half),
                       weights, groups=batch * channels).reshape(images.shape)
    return _choose(blur_mask, _round_back(blurred, images), images)


def random_gaussian_blur(images, generator, kernel_size=3, sigma=(0.1, 2.0), p=0.5):
    sigmas, blur_mask = gaussian_blur_params(images.shape[0], generator, images.device, sigma, p)
    return apply_gaussian_blur(images, sigmas, blur_mask, kernel_size)


# --- salt-and-pepper noise ----------------------------------------------------------------

def salt_pepper_params(batch_size, height, width, generator, device, amount=0.05):
    """(salt, pepper) masks, each (B, 1, H, W): a fraction `amount` of each image's pixels
    in expectation, half salt and half pepper. One mask for all channels, so a hit pixel
    turns white or black rather than one channel changing colour."""
    draws = torch.rand(batch_size, 1, height, width, generator=generator, device=device)
    return draws < amount / 2, (draws >= amount / 2) & (draws < amount)


def apply_salt_pepper(images, salt, pepper):
    """Salt pixels to the maximum (255 or 1.0), pepper pixels to 0. Use it on un-normalised
    images: after normalisation 0 and 255 would no longer be black and white."""
    return _fill(_fill(images, pepper, 0), salt, _max_value(images.dtype))


def random_salt_pepper(images, generator, amount=0.05):
    batch, _, height, width = images.shape
    return apply_salt_pepper(images, *salt_pepper_params(batch, height, width, generator,
                                                         images.device, amount))


# --- Gaussian noise -----------------------------------------------------------------------

def gaussian_noise_params(shape, generator, device, std=0.1):
    """Additive noise on the [0, 1] scale for a batch of this shape."""
    return std * torch.randn(shape, generator=generator, device=device)


def apply_gaussian_noise(images, noise):
    """Add noise (given on the [0, 1] scale) and clamp to the valid range. For uint8 the
    noise is scaled by 255 and truncated to whole levels, as torchvision's gaussian_noise."""
    if images.is_floating_point():
        return (images + noise.to(images.dtype)).clamp_(0.0, 1.0)
    levels = (noise * _max_value(images.dtype)).to(torch.int16)
    return (images + levels).clamp_(0, int(_max_value(images.dtype))).to(images.dtype)


def random_gaussian_noise(images, generator, std=0.1):
    return apply_gaussian_noise(images, gaussian_noise_params(images.shape, generator,
                                                              images.device, std))


# --- MixUp and CutMix -----------------------------------------------------------------------
# Both pair image i with image permutation[i] and return soft targets (B, num_classes):
# weight lam[i] on image i's label and 1 - lam[i] on its partner's, lam drawn per image.

def _sample_gamma(concentration, shape, generator, device, candidates=8):
    """Gamma(concentration, 1) samples from `generator` (torch.distributions takes none).

    Marsaglia & Tsang (2000): each candidate is accepted with probability >= 0.95 (for
    concentration >= 1; smaller ones are boosted by 1 and scaled by U^(1/a)), so of
    `candidates` drawn at once the first accepted is taken, without a host round trip; if
    all are rejected (probability < 1e-10) the sample is d = alpha - 1/3, near the median.
    """
    boosted = concentration < 1
    alpha = concentration + 1 if boosted else concentration
    d = alpha - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    normals = torch.randn(*shape, candidates, generator=generator, device=device)
    uniforms = torch.rand(*shape, candidates, generator=generator, device=device)
    cubes = (1.0 + c * normals) ** 3
    log_cubes = torch.log(cubes.clamp(min=1e-30))
    log_density_ratio = 0.5 * normals ** 2 + d - d * cubes + d * log_cubes
    accepted = (cubes > 0) & (torch.log(uniforms) < log_density_ratio)
    index, found = _first_true(accepted)
    samples = torch.where(found, d * cubes.gather(-1, index[..., None]).squeeze(-1),
                          torch.full(shape, d, device=device))
    if boosted:
        boost = torch.rand(shape, generator=generator, device=device) ** (1.0 / concentration)
        samples = samples * boost
    return samples


def _sample_beta(alpha, batch_size, generator, device):
    """Beta(alpha, alpha) per image, as the ratio of two Gamma(alpha) samples."""
    gammas = _sample_gamma(alpha, (2, batch_size), generator, device)
    return gammas[0] / gammas.sum(dim=0)


def _soft_labels(labels, num_classes):
    """Class indices -> one-hot float targets; soft targets (B, num_classes) pass through."""
    if labels.ndim == 2:
        return labels.float()
    return F.one_hot(labels, num_classes).float()


def _mix_labels(labels, permutation, lam, num_classes):
    targets = _soft_labels(labels, num_classes)
    return lam[:, None] * targets + (1.0 - lam[:, None]) * targets[permutation]


def mixup_params(batch_size, generator, device, alpha=1.0):
    """(permutation, lam): image i is mixed with image permutation[i] with weight lam[i]."""
    permutation = torch.randperm(batch_size, generator=generator, device=device)
    return permutation, _sample_beta(alpha, batch_size, generator, device)


def apply_mixup(images, labels, permutation, lam, num_classes):
    """lam[i]*image_i + (1 - lam[i])*image_perm[i], with targets mixed the same way."""
    work = _as_float(images)
    weights = _per_image(lam).to(work.dtype)
    mixed = (work[permutation] * (1.0 - weights)).addcmul_(work, weights)
    return _round_back(mixed, images), _mix_labels(labels, permutation, lam, num_classes)


def random_mixup(images, labels, num_classes, generator, alpha=1.0):
    permutation, lam = mixup_params(images.shape[0], generator, images.device, alpha)
    return apply_mixup(images, labels, permutation, lam, num_classes)


def cutmix_params(batch_size, height, width, generator, device, alpha=1.0):
    """(permutation, tops, lefts, heights, widths): the box of image permutation[i] pasted
    into image i, as torchvision CutMix draws it but per image: lam ~ Beta(alpha, alpha),
    a box of sides sqrt(1 - lam) * (H, W) centred uniformly, clipped at the border."""
    permutation = torch.randperm(batch_size, generator=generator, device=device)
    lam = _sample_beta(alpha, batch_size, generator, device)
    centre_cols = torch.randint(0, width, (batch_size,), generator=generator, device=device)
    centre_rows = torch.randint(0, height, (batch_size,), generator=generator, device=device)
    half_side = 0.5 * torch.sqrt(1.0 - lam)
    half_widths, half_heights = (half_side * width).long(), (half_side * height).long()
    lefts, widths = _clipped_span(centre_cols - half_widths, centre_cols + half_widths, width)
    tops, heights = _clipped_span(centre_rows - half_heights, centre_rows + half_heights, height)
    return permutation, tops, lefts, heights, widths


def apply_cutmix(images, labels, permutation, tops, lefts, heights, widths, num_classes):
    """Paste each partner's box; the label weight of image i is the area it keeps (after
    clipping), so targets match the pixels exactly."""
    height, width = images.shape[-2:]
    mask = _box_mask(tops, lefts, heights, widths, height, width)
    mixed = torch.where(mask, images[permutation], images)
    kept = 1.0 - (heights * widths).float() / (height * width)
    return mixed, _mix_labels(labels, permutation, kept, num_classes)


def random_cutmix(images, labels, num_classes, generator, alpha=1.0):
    batch, _, height, width = images.shape
    params = cutmix_params(batch, height, width, generator, images.device, alpha)
    return apply_cutmix(images, labels, *params, num_classes=num_classes)


# --- pipelines: (images, labels, generator) -> (images, targets) ---------------------------

def _format_options(options):
    return ", ".join(f"{key}={value!r}" for key, value in options.items())


class Identity:
    """No augmentation (the "none" arm, and the eval transform of most arms)."""

    per_image = False

    def __call__(self, images, labels, generator):
        return images, labels

    def __repr__(self):
        return "Identity()"


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


class RandomOp:
    """A batched random_* op with fixed options, e.g. RandomOp(random_rotation, degrees=15)."""

    per_image = False

    def __init__(self, op, **options):
        self.op = op
        self.options = options

    def __call__(self, images, labels, generator):
        return self.op(images, generator=generator, **self.options), labels

    def __repr__(self):
        return f"{self.op.__name__}({_format_options(self.options)})"


class DeterministicOp:
    """A batched op without randomness, e.g. DeterministicOp(resize, size=24)."""

    per_image = False

    def __init__(self, op, **options):
        self.op = op
        self.options = options

    def __call__(self, images, labels, generator):
        return self.op(images, **self.options), labels

    def __repr__(self):
        return f"{self.op.__name__}({_format_options(self.options)})"


class MixUp:
    """MixUp (Zhang et al. 2018) with one Beta(alpha, alpha) weight per image; soft targets."""

    per_image = False

    def __init__(self, num_classes, alpha=1.0):
        self.num_classes = num_classes
        self.alpha = alpha

    def __call__(self, images, labels, generator):
        return random_mixup(images, labels, self.num_classes, generator, self.alpha)

    def __repr__(self):
        return f"MixUp(num_classes={self.num_classes}, alpha={self.alpha})"


class CutMix:
    """CutMix (Yun et al. 2019) with one box per image; soft targets weighted by area."""

    per_image = False

    def __init__(self, num_classes, alpha=1.0):
        self.num_classes = num_classes
        self.alpha = alpha

    def __call__(self, images, labels, generator):
        return random_cutmix(images, labels, self.num_classes, generator, self.alpha)

    def __repr__(self):
        return f"CutMix(num_classes={self.num_classes}, alpha={self.alpha})"


class PerImageTorchvision:
    """A torchvision.transforms.v2 transform applied image by image (AutoAugment and kin).

    torchvision draws from the global torch RNG, so the generator only provides a seed for
    it, inside fork_rng so the caller's global state is left untouched: the same generator
    state gives the same output. The images go through on a CPU copy and come back as one
    batch: per image on a GPU would be many tiny kernels and a host round trip each.
    """

    per_image = True

    def __init__(self, transform):
        self.transform = transform

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

def _shrunk(image_size):
    """The "resize" and "center_crop" arms' intermediate size: 3/4 of the side (24 for 32)."""
    return round(0.75 * image_size)


def _resize_arm(image_size):
    """Down to 3/4 of the side and back (32 -> 24 -> 32): the same objects at a lower
    resolution, a model of a low-resolution camera; the output size stays what the model
    expects."""
    return Compose(DeterministicOp(resize, size=_shrunk(image_size)),
                   DeterministicOp(resize, size=image_size))


def _center_crop_arm(image_size):
    """Central 3/4 of the side resized back (32 -> crop 24 -> 32): a 1.33x zoom that drops
    the border, where CIFAR objects rarely are."""
    return Compose(DeterministicOp(center_crop, size=_shrunk(image_size)),
                   DeterministicOp(resize, size=image_size))


# name -> factory(num_classes, image_size) -> pipeline; image_size is the side of the square
# images the pipeline receives. Magnitudes: see the module docstring.
ARMS = {
    "none": lambda num_classes, image_size: Identity(),
    # the report's nine, each alone
    "rotation": lambda num_classes, image_size: RandomOp(random_rotation, degrees=15.0),
    "flip": lambda num_classes, image_size: RandomOp(random_flip, p=0.5),
    "color_jitter": lambda num_classes, image_size: RandomOp(
        random_color_jitter, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1),
    "random_resized_crop": lambda num_classes, image_size: RandomOp(
        random_resized_crop, size=image_size, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3)),
    "resize": lambda num_classes, image_size: _resize_arm(image_size),
    "center_crop": lambda num_classes, image_size: _center_crop_arm(image_size),
    "cutout": lambda num_classes, image_size: RandomOp(random_cutout, size=image_size // 2),
    "gaussian_blur": lambda num_classes, image_size: RandomOp(
        random_gaussian_blur, kernel_size=3, sigma=(0.1, 2.0), p=0.5),
    "salt_pepper": lambda num_classes, image_size: RandomOp(random_salt_pepper, amount=0.05),
    # the usual CIFAR recipe
    "standard": lambda num_classes, image_size: CropFlip(),
    # extras
    "gaussian_noise": lambda num_classes, image_size: RandomOp(random_gaussian_noise, std=0.1),
    "random_erasing": lambda num_classes, image_size: RandomOp(
        random_erasing, p=0.5, scale=(0.02, 0.33), ratio=(0.3, 3.3)),
    "mixup": lambda num_classes, image_size: MixUp(num_classes, alpha=1.0),
    "cutmix": lambda num_classes, image_size: CutMix(num_classes, alpha=1.0),
    "autoaugment": lambda num_classes, image_size: PerImageTorchvision(
        T.AutoAugment(T.AutoAugmentPolicy.CIFAR10)),
    "randaugment": lambda num_classes, image_size: PerImageTorchvision(T.RandAugment()),
    "trivialaugment": lambda num_classes, image_size: PerImageTorchvision(T.TrivialAugmentWide()),
}

# Arms whose transform is deterministic and so must be applied at test time too.
DETERMINISTIC_ARMS = ("resize", "center_crop")


def _check_arm(name):
    if name not in ARMS:
        raise ValueError(f"unknown augmentation arm {name!r}: choose from {', '.join(ARMS)}")


def eval_transform_for_arm(name, image_size=32):
    """The transform to apply to validation and test batches for arm `name`: the arm's own
    transform for the deterministic arms (resize, center_crop), which change what every
    image looks like and so must change test images too; Identity() for every other arm."""
    _check_arm(name)
    if name in DETERMINISTIC_ARMS:
        return ARMS[name](None, image_size)
    return Identity()


def arm_transforms(name, num_classes, image_size=32):
    """(train_augment, eval_augment) for engine.training.Run, which applies
    eval_augment to every split and train_augment after it on training batches only: a
    deterministic arm is therefore given once, as eval_augment (passing ARMS[name] as
    train_augment as well would resize training images twice)."""
    _check_arm(name)
    if name in DETERMINISTIC_ARMS:
        return None, eval_transform_for_arm(name, image_size)
    return ARMS[name](num_classes, image_size), None

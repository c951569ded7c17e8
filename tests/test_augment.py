"""engine/augment.py: batched ops equal torchvision's per image, parameters differ between
the images of a batch, labels stay aligned, dtype/range/shape are kept, seeds reproduce.

Tolerances against torchvision.transforms.v2.functional, image by image with the same
parameters (uint8 in levels; float inputs: 1e-5 absolute everywhere, float rounding only):
  exact    crop, flip, rotation (the same sampling grid, built from a float64 matrix in
           torchvision's order), brightness / contrast / saturation (the same arithmetic,
           fused multiply-add included), resize and centre crop (torchvision's own kernels
           on the batch), random erasing and Cutout (a box of one value).
  1 level  hue: an equivalent HSV formula in fewer kernels; the float result differs in
           the last bit, and the conversion to uint8 truncates, so a value just under an
           integer can land one level lower (about 1 value in 50,000).
           Gaussian blur: the same 2-D kernel and convolution as torchvision, exact here,
           but a grouped convolution over B*C channels may pick another algorithm (another
           summation order) than torchvision's over 3, and a .5 tie then rounds the other way.
           Resized crop: torchvision resizes uint8 with a fixed-point kernel; we compute
           in float and round (about 1 value in 6 differs by one level), and equal
           torchvision's float path rounded exactly, which is tested too.
           Gaussian noise: std*z*255 vs z*(std*255), then truncated to whole levels.
  2 levels the whole colour jitter: hue's one level can be scaled by a later contrast or
           saturation factor (<= 1.4) before truncation. Fewer than 0.1% of values may differ.
"""
import json

import pytest
from scipy import stats
import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF

from benchmarks import augment_throughput
from conftest import run_script
from engine import augment

BATCH = 8
SIZE = 32
NUM_CLASSES = 10
DTYPES = ["uint8", "float32"]
FLOAT_ATOL = 1e-5


def make_images(dtype="uint8", batch=BATCH, seed=0, low=0, high=256):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(low, high, (batch, 3, SIZE, SIZE), dtype=torch.uint8,
                           generator=generator)
    return images if dtype == "uint8" else images.float() / 255


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def per_image(function, images, *params):
    """torchvision's function applied to image i with the i-th entry of each parameter."""
    return torch.stack([function(image, *(to_python(param[i]) for param in params))
                        for i, image in enumerate(images)])


def to_python(value):
    return value.item() if isinstance(value, torch.Tensor) and value.ndim == 0 else value


def assert_matches(batched, reference, max_levels=0, max_fraction_off=1.0):
    """uint8: at most max_levels apart, and at most max_fraction_off of values off at all;
    float: within FLOAT_ATOL."""
    assert batched.dtype == reference.dtype and batched.shape == reference.shape
    difference = (batched.double() - reference.double()).abs()
    if batched.is_floating_point():
        assert difference.max() <= FLOAT_ATOL, difference.max()
        return
    assert difference.max() <= max_levels, difference.max()
    assert (difference > 0).double().mean() <= max_fraction_off


# --- the batched result for image i equals torchvision's for image i ------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_crop_equals_torchvision_pad_then_crop(dtype):
    images = make_images(dtype)
    tops, lefts = augment.crop_params(BATCH, 4, seeded(), "cpu")
    reference = per_image(lambda image, top, left: TF.crop(TF.pad(image, [4]), top, left, SIZE,
                                                           SIZE), images, tops, lefts)
    assert_matches(augment.apply_crop(images, tops, lefts, 4), reference)


@pytest.mark.parametrize("dtype", DTYPES)
def test_flip_equals_torchvision(dtype):
    images = make_images(dtype)
    flips = augment.flip_params(BATCH, 0.5, seeded(), "cpu")
    reference = per_image(lambda image, flip: TF.horizontal_flip(image) if flip else image,
                          images, flips)
    assert_matches(augment.apply_flip(images, flips), reference)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
def test_rotation_equals_torchvision_with_fill_zero(dtype, interpolation):
    images = make_images(dtype)
    angles = augment.rotation_params(BATCH, seeded(), "cpu", degrees=30.0)
    mode = T.InterpolationMode(interpolation)
    reference = per_image(lambda image, angle: TF.rotate(image, angle, interpolation=mode, fill=0),
                          images, angles)
    assert_matches(augment.apply_rotation(images, angles, interpolation), reference)


def adjust(name):
    """Our colour jitter with one component, `name`, applied to every image."""
    code = augment.JITTER_COMPONENTS.index(name)
    return lambda images, factors: augment.apply_color_jitter(
        images, torch.full((len(images), 1), code), **{name: factors})


COLOUR_ADJUSTMENTS = [  # (ours, torchvision's, uint8 tolerance in levels)
    (adjust("brightness"), TF.adjust_brightness, "brightness", 0),
    (adjust("contrast"), TF.adjust_contrast, "contrast", 0),
    (adjust("saturation"), TF.adjust_saturation, "saturation", 0),
    (adjust("hue"), TF.adjust_hue, "hue", 1),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ours, theirs, name, levels", COLOUR_ADJUSTMENTS,
                         ids=[entry[2] for entry in COLOUR_ADJUSTMENTS])
def test_colour_adjustment_equals_torchvision(dtype, ours, theirs, name, levels):
    images = make_images(dtype, batch=32)
    factors = augment.color_jitter_params(32, seeded(), "cpu", 0.5, 0.5, 0.5, 0.5)[name]
    reference = per_image(theirs, images, factors)
    assert_matches(ours(images, factors), reference, max_levels=levels, max_fraction_off=1e-3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_colour_jitter_equals_torchvision_in_each_images_own_order(dtype):
    images = make_images(dtype, batch=32)
    params = augment.color_jitter_params(32, seeded(), "cpu")
    adjustments = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    factors = [params[name] for name in augment.JITTER_COMPONENTS]

    def torchvision_jitter(index):
        image = images[index]
        for code in params["order"][index].tolist():  # as ColorJitter walks its fn_idx
            image = adjustments[code](image, factors[code][index].item())
        return image

    reference = torch.stack([torchvision_jitter(index) for index in range(32)])
    assert_matches(augment.apply_color_jitter(images, **params), reference,
                   max_levels=2, max_fraction_off=1e-3)


def test_colour_jitter_skips_switched_off_components():
    images = make_images()
    params = augment.color_jitter_params(BATCH, seeded(), "cpu", brightness=0.4, contrast=0,
                                         saturation=None, hue=0)
    assert params["contrast"] is None and params["saturation"] is None and params["hue"] is None
    assert torch.equal(augment.apply_color_jitter(images, **params),
                       adjust("brightness")(images, params["brightness"]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_resized_crop_equals_torchvision(dtype):
    images = make_images(dtype, batch=32)
    boxes = augment.resized_crop_params(32, SIZE, SIZE, seeded(), "cpu")
    def torchvision_resized_crop(image, *box):
        return TF.resized_crop(image, *box, size=[SIZE, SIZE])

    reference = per_image(torchvision_resized_crop, images, *boxes)
    batched = augment.apply_resized_crop(images, *boxes, size=SIZE)
    assert_matches(batched, reference, max_levels=1)
    if dtype == "uint8":  # torchvision's float path, rounded, is matched exactly
        float_path = per_image(torchvision_resized_crop, images.float(), *boxes)
        float_path = float_path.round().to(torch.uint8)
        assert_matches(batched, float_path)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [24, (40, 20)])
def test_resize_equals_torchvision(dtype, size):
    images = make_images(dtype)
    reference = per_image(lambda image: TF.resize(image, size), images)
    assert_matches(augment.resize(images, size), reference)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [24, (16, 30)])
def test_center_crop_equals_torchvision(dtype, size):
    images = make_images(dtype)
    reference = per_image(lambda image: TF.center_crop(image, size), images)
    assert_matches(augment.center_crop(images, size), reference)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel_size", [3, 5])
def test_gaussian_blur_equals_torchvision(dtype, kernel_size):
    images = make_images(dtype, batch=32)
    sigmas, blurred = augment.gaussian_blur_params(32, seeded(), "cpu", p=0.5)
    assert 0 < blurred.sum() < 32
    def torchvision_blur(image, sigma, blur):
        return TF.gaussian_blur(image, [kernel_size] * 2, [sigma] * 2) if blur else image

    reference = per_image(torchvision_blur, images, sigmas, blurred)
    assert_matches(augment.apply_gaussian_blur(images, sigmas, blurred, kernel_size), reference,
                   max_levels=1, max_fraction_off=1e-3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_random_erasing_equals_torchvision(dtype):
    images = make_images(dtype, batch=32)
    boxes = augment.erasing_params(32, SIZE, SIZE, seeded(), "cpu")
    zero = torch.tensor(0.0)
    reference = per_image(lambda image, *box: TF.erase(image, *box, v=zero), images, *boxes)
    assert_matches(augment.apply_erase(images, *boxes), reference)


def test_random_erasing_boxes_follow_torchvision_rules():
    tops, lefts, heights, widths = augment.erasing_params(2000, SIZE, SIZE, seeded(), "cpu")
    erased = heights > 0
    assert 0.4 < erased.double().mean() < 0.6                    # p = 0.5
    area = (heights * widths)[erased].double() / (SIZE * SIZE)
    assert area.min() >= 0.01 and area.max() <= 0.36              # scale (0.02, 0.33), rounded
    assert (heights < SIZE).all() and (widths < SIZE).all()       # strictly inside, as torchvision
    assert (tops + heights <= SIZE).all() and (lefts + widths <= SIZE).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_gaussian_noise_is_torchvisions_formula(dtype):
    images = make_images(dtype)
    noise = augment.gaussian_noise_params(images.shape, seeded(), "cpu", std=0.1)
    standard_normal = noise / 0.1
    reference = torch.stack([  # torchvision's gaussian_noise with its randn_like replaced by ours
        image + draw * 0.1 if image.is_floating_point()
        else (image + (draw * (0.1 * 255)).to(torch.int16)).clamp(0, 255).to(torch.uint8)
        for image, draw in zip(images, standard_normal)])
    if dtype == "float32":
        reference = reference.clamp(0, 1)
    assert_matches(augment.apply_gaussian_noise(images, noise), reference,
                   max_levels=1, max_fraction_off=1e-3)


# --- parameters differ between the images of one batch --------------------------------------

RANDOM_ARMS = [name for name in augment.ARMS
               if name not in ("none", *augment.DETERMINISTIC_ARMS, "mixup", "cutmix")]


@pytest.mark.parametrize("arm", RANDOM_ARMS)
def test_copies_of_one_image_come_out_different(arm):
    """A batch-level parameter would transform every copy alike."""
    copies = make_images(batch=1).expand(16, -1, -1, -1).contiguous()
    transform = augment.ARMS[arm](NUM_CLASSES, SIZE)
    augmented, _ = transform(copies, torch.zeros(16, dtype=torch.long), seeded())
    distinct = {tuple(image.flatten().tolist()) for image in augmented}
    assert len(distinct) >= 2


@pytest.mark.parametrize("draw", [
    lambda g: augment.crop_params(64, 4, g, "cpu"),
    lambda g: augment.flip_params(64, 0.5, g, "cpu"),
    lambda g: augment.rotation_params(64, g, "cpu"),
    lambda g: tuple(value for value in augment.color_jitter_params(64, g, "cpu").values()),
    lambda g: augment.resized_crop_params(64, SIZE, SIZE, g, "cpu"),
    lambda g: augment.cutout_params(64, SIZE, SIZE, g, "cpu"),
    lambda g: augment.erasing_params(64, SIZE, SIZE, g, "cpu"),
    lambda g: augment.gaussian_blur_params(64, g, "cpu"),
    lambda g: augment.mixup_params(64, g, "cpu"),
    lambda g: augment.cutmix_params(64, SIZE, SIZE, g, "cpu"),
], ids=["crop", "flip", "rotation", "color_jitter", "resized_crop", "cutout", "erasing", "blur",
        "mixup", "cutmix"])
def test_every_parameter_varies_across_the_batch(draw):
    params = draw(seeded())
    for values in (params if isinstance(params, tuple) else (params,)):
        rows = values.reshape(len(values), -1)
        assert len(torch.unique(rows, dim=0)) > 1


def test_each_image_gets_its_own_jitter_order():
    order = augment.color_jitter_params(256, seeded(), "cpu")["order"]
    assert (order.sort(dim=1).values == torch.arange(4)).all()  # each row a permutation
    assert len(torch.unique(order, dim=0)) == 24                 # all 24 orders occur


# --- labels stay with their images ------------------------------------------------------------

def dark_or_bright(labels, dtype):
    """Images whose brightness encodes a 0/1 label: flat grey 40 or 200 (of 255)."""
    levels = torch.where(labels.bool(), 200, 40).to(torch.uint8)[:, None, None, None]
    images = levels.expand(-1, 3, SIZE, SIZE).contiguous()
    return images if dtype == "uint8" else images.float() / 255


@pytest.mark.parametrize("arm", [name for name in augment.ARMS
                                 if not augment.ARMS[name](NUM_CLASSES, SIZE).per_image
                                 and name not in ("mixup", "cutmix")])
def test_labels_stay_with_their_images(arm):
    labels = torch.tensor([0, 1, 1, 0, 1, 0, 0, 0, 1, 1, 0, 1, 0, 1, 1, 0])
    images = dark_or_bright(labels, "uint8")
    augmented, targets = augment.ARMS[arm](NUM_CLASSES, SIZE)(images, labels, seeded())
    assert torch.equal(targets, labels)
    medians = augmented.float().flatten(1).median(dim=1).values
    assert torch.equal(medians > 100, labels.bool())


def test_per_image_pipeline_keeps_image_order():
    images, labels = make_images(), torch.arange(BATCH)
    augmented, targets = augment.PerImageTorchvision(T.Grayscale(3))(images, labels, seeded())
    assert torch.equal(augmented, per_image(lambda image: TF.rgb_to_grayscale(image, 3), images))
    assert torch.equal(targets, labels)


def flat_distinct_images(batch=BATCH):
    """Float images, image i a flat value of its own, label i: mixtures can be read back."""
    values = torch.linspace(0.1, 0.9, batch)
    return values[:, None, None, None].expand(-1, 3, SIZE, SIZE).contiguous(), torch.arange(batch)


def partner_and_weight(targets, index):
    """From a soft target row: (partner label, weight on the image's own label)."""
    row = targets[index].clone()
    own = row[index].item()
    row[index] = 0
    return (row.argmax().item() if row.max() > 0 else index), own


def test_mixup_weight_is_the_image_mixing_proportion():
    images, labels = flat_distinct_images()
    mixed, targets = augment.Mixing(augment.random_mixup, num_classes=NUM_CLASSES)(images, labels, seeded())
    assert targets.dtype == torch.float32 and targets.shape == (BATCH, NUM_CLASSES)
    assert torch.allclose(targets.sum(dim=1), torch.ones(BATCH))
    weights = []
    for index in range(BATCH):
        partner, weight = partner_and_weight(targets, index)
        expected = weight * images[index, 0, 0, 0] + (1 - weight) * images[partner, 0, 0, 0]
        assert torch.allclose(mixed[index], expected.expand(3, SIZE, SIZE), atol=1e-6)
        weights.append(weight)
    assert len(set(weights)) > 1  # one weight per image


def test_cutmix_weight_is_the_area_kept():
    images, labels = flat_distinct_images()
    mixed, targets = augment.Mixing(augment.random_cutmix, num_classes=NUM_CLASSES)(images, labels, seeded(3))
    assert torch.allclose(targets.sum(dim=1), torch.ones(BATCH))
    for index in range(BATCH):
        partner, weight = partner_and_weight(targets, index)
        own_pixels = (mixed[index, 0] == images[index, 0, 0, 0]).double().mean().item()
        partner_pixels = (mixed[index, 0] == images[partner, 0, 0, 0]).double().mean().item()
        assert own_pixels == pytest.approx(weight)
        if partner != index:
            assert partner_pixels == pytest.approx(1 - weight)


def test_cutmix_pastes_a_rectangle_of_the_partner():
    images, labels = make_images(), torch.arange(BATCH)
    params = augment.cutmix_params(BATCH, SIZE, SIZE, seeded(), "cpu")
    permutation, tops, lefts, heights, widths = params
    mixed, _ = augment.apply_cutmix(images, labels, *params, num_classes=NUM_CLASSES)
    for i in range(BATCH):
        top, left, bottom, right = tops[i], lefts[i], tops[i] + heights[i], lefts[i] + widths[i]
        expected = images[i].clone()
        expected[:, top:bottom, left:right] = images[permutation[i], :, top:bottom, left:right]
        assert torch.equal(mixed[i], expected)


# --- dtype, range and shape ---------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("arm", list(augment.ARMS))
def test_arm_keeps_dtype_range_and_shape(arm, dtype):
    images, labels = make_images(dtype), torch.randint(0, NUM_CLASSES, (BATCH,))
    augmented, targets = augment.ARMS[arm](NUM_CLASSES, SIZE)(images, labels, seeded())
    assert augmented.dtype == images.dtype and augmented.shape == images.shape
    if dtype == "float32":
        assert augmented.min() >= 0 and augmented.max() <= 1
    if arm in ("mixup", "cutmix"):
        assert targets.dtype == torch.float32 and targets.shape == (BATCH, NUM_CLASSES)
    else:
        assert torch.equal(targets, labels)


@pytest.mark.parametrize("dtype", DTYPES)
def test_ops_that_change_size_give_the_size_asked(dtype):
    images = make_images(dtype)
    assert augment.resize(images, 24).shape == (BATCH, 3, 24, 24)
    assert augment.center_crop(images, (20, 28)).shape == (BATCH, 3, 20, 28)
    assert augment.random_resized_crop(images, seeded(), size=48).shape == (BATCH, 3, 48, 48)
    assert augment.random_resized_crop(images, seeded()).shape == images.shape


def test_batched_ops_leave_their_input_unchanged():
    images = make_images()
    original = images.clone()
    for arm in augment.ARMS:
        augment.ARMS[arm](NUM_CLASSES, SIZE)(images, torch.arange(BATCH), seeded())
        assert torch.equal(images, original), arm


# --- salt and pepper, Cutout ----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_salt_and_pepper_hits_the_fraction_asked_on_every_channel(dtype):
    # Values 1..254 so that a 0 or a 255 can only be pepper or salt.
    images = make_images(dtype, batch=256, low=1, high=255)
    noisy = augment.random_salt_pepper(images, seeded(), amount=0.1)
    brightest = 255 if dtype == "uint8" else 1.0
    changed = noisy != images
    assert (changed == changed[:, :1]).all()              # the same mask on every channel
    salt = (noisy == brightest).all(dim=1)
    pepper = (noisy == 0).all(dim=1)
    assert (changed.any(dim=1) == (salt | pepper)).all()  # nothing else changes
    # 262,144 pixels: the binomial standard deviation of each fraction is 0.0004
    assert salt.double().mean().item() == pytest.approx(0.05, abs=0.003)
    assert pepper.double().mean().item() == pytest.approx(0.05, abs=0.003)


def test_cutout_arm_masks_a_16_pixel_square_clipped_at_the_border():
    images = make_images(batch=512, low=1)  # no zeros: black pixels are the hole
    cut, _ = augment.ARMS["cutout"](NUM_CLASSES, SIZE)(images, torch.arange(512), seeded())
    holes = cut == 0
    assert (holes == holes[:, :1]).all()                  # every channel alike
    assert torch.equal(torch.where(holes, images, cut), images)  # nothing else changes
    rows, cols = holes[:, 0].any(dim=2), holes[:, 0].any(dim=1)
    heights, widths = rows.sum(dim=1), cols.sum(dim=1)
    assert torch.equal(holes[:, 0].sum(dim=(1, 2)), heights * widths)  # one rectangle each
    for start, length in ((rows.int().argmax(dim=1), heights), (cols.int().argmax(dim=1), widths)):
        inside = (start > 0) & (start + length < SIZE)
        assert (length[inside] == 16).all()               # exactly 16 when not clipped
        assert (length >= 8).all() and (length <= 16).all()  # the centre is in the image
        assert (length < 16).any()                        # centres near the border get clipped


# --- determinism, eval transforms, pipelines ------------------------------------------------------

@pytest.mark.parametrize("arm", list(augment.ARMS))
def test_same_seed_same_output_other_seed_other_output(arm):
    images, labels = make_images(), torch.arange(BATCH)
    transform = augment.ARMS[arm](NUM_CLASSES, SIZE)
    first, first_targets = transform(images, labels, seeded(5))
    again, again_targets = transform(images, labels, seeded(5))
    other, _ = transform(images, labels, seeded(6))
    assert torch.equal(first, again) and torch.equal(first_targets, again_targets)
    if arm in ("none", *augment.DETERMINISTIC_ARMS):
        assert torch.equal(first, other)
    else:
        assert not torch.equal(first, other)


def test_per_image_pipelines_leave_the_global_rng_alone():
    state = torch.get_rng_state()
    augment.ARMS["randaugment"](NUM_CLASSES, SIZE)(make_images(), torch.arange(BATCH), seeded())
    assert torch.equal(torch.get_rng_state(), state)


def test_deterministic_arms_apply_at_test_time_too():
    images, labels = make_images(), torch.arange(BATCH)
    for arm in augment.ARMS:
        evaluate = augment.eval_transform_for_arm(arm, SIZE)
        assert evaluate.per_image is False
        tested, _ = evaluate(images, labels, seeded())
        if arm in augment.DETERMINISTIC_ARMS:
            trained, _ = augment.ARMS[arm](NUM_CLASSES, SIZE)(images, labels, seeded(1))
            assert torch.equal(tested, trained) and not torch.equal(tested, images)
            assert augment.arm_transforms(arm, NUM_CLASSES, SIZE)[0] is None
        else:
            assert torch.equal(tested, images)
            assert augment.arm_transforms(arm, NUM_CLASSES, SIZE)[1] is None
    with pytest.raises(ValueError, match="unknown augmentation arm"):
        augment.eval_transform_for_arm("sharpen")


def test_center_crop_arm_zooms_into_the_centre():
    images, labels = make_images(), torch.arange(BATCH)
    zoomed, _ = augment.ARMS["center_crop"](NUM_CLASSES, SIZE)(images, labels, seeded())
    expected = TF.resize(TF.center_crop(images, 24), SIZE)
    assert torch.equal(zoomed, expected)


def test_arms_have_readable_reprs_and_say_whether_they_loop_over_images():
    per_image_arms = {"autoaugment", "randaugment", "trivialaugment"}
    for arm, factory in augment.ARMS.items():
        transform = factory(NUM_CLASSES, SIZE)
        assert transform.per_image == (arm in per_image_arms)
        assert " object at 0x" not in repr(transform) and "lambda" not in repr(transform)
    assert repr(augment.ARMS["rotation"](NUM_CLASSES, SIZE)) == "random_rotation(degrees=15.0)"


def test_compose_chains_and_reports_per_image():
    composed = augment.Compose(augment.CropFlip(), augment.RandomOp(augment.random_cutout, size=8))
    assert composed.per_image is False
    autoaugment = augment.ARMS["autoaugment"](NUM_CLASSES, SIZE)
    assert augment.Compose(composed, autoaugment).per_image is True
    images, labels = make_images(), torch.arange(BATCH)
    generator_a, generator_b = seeded(), seeded()
    chained, _ = composed(images, labels, generator_a)
    by_hand, _ = augment.CropFlip()(images, labels, generator_b)
    assert torch.equal(chained, augment.random_cutout(by_hand, generator_b, size=8))


# --- the throughput benchmark ------------------------------------------------------------------

def test_benchmark_writes_one_json_entry_per_operation(tmp_path):
    path = tmp_path / "throughput.json"
    run_script("benchmarks.augment_throughput", "--batch-size", 16, "--repeats", 1,
               "--json", path, timeout=300)
    report = json.loads(path.read_text())
    assert report["device"] == "cpu" and report["torch"] == torch.__version__ and report["date"]
    batched_arms = {name for name, factory in augment.ARMS.items()
                    if name != "none" and not factory(NUM_CLASSES, SIZE).per_image}
    names = [entry["operation"] for entry in report["operations"]]
    assert sorted(names) == sorted(batched_arms)
    for entry in report["operations"]:
        assert entry["batched_images_per_second"] > 0 and entry["per_image_images_per_second"] > 0
        assert entry["ratio"] == pytest.approx(entry["batched_images_per_second"]
                                               / entry["per_image_images_per_second"])


def test_benchmark_ratio_is_the_per_image_time_over_the_batched_time(monkeypatch):
    """Timed on a stand-in clock: each call advances it by its own duration; the first
    (warm-up) call is left out and the fastest of the rest counts."""
    now = [0.0]

    def taking(*durations):
        """A stand-in op whose calls advance the clock by each duration in turn."""
        calls = iter(durations)

        def call(*args):
            now[0] += next(calls)
        return call

    monkeypatch.setitem(augment.ARMS, "flip", lambda classes, size: taking(5.0, 2.0, 1.0))
    monkeypatch.setitem(augment_throughput.BASELINES, "flip", (taking(9.0, 4.0, 6.0), "", True))
    images, labels = make_images(), torch.arange(BATCH)
    entry = augment_throughput.measure("flip", images, labels, repeats=2, clock=lambda: now[0])
    assert entry["batched_images_per_second"] == BATCH / 1.0
    assert entry["per_image_images_per_second"] == BATCH / 4.0
    assert entry["ratio"] == 4.0


def test_colour_jitter_launches_few_kernels_per_batch():
    """A GPU step at the study's batch of 128 is bound by kernel launches: colour jitter
    computed hue and every blend for all images at each of its 4 steps (236 aten ops per
    batch, about one training step's launches); hue once and one blend chain per slot: 144."""
    images, labels = make_images(batch=128), torch.arange(128) % NUM_CLASSES
    arm = augment.ARMS["color_jitter"](NUM_CLASSES, SIZE)
    assert sum(augment_throughput.aten_ops(arm, images, labels, seeded()).values()) <= 150


def test_mixing_weights_follow_torchvisions_beta_1_1_which_is_uniform():
    """MixUp and CutMix draw lam ~ Beta(alpha, alpha) with torchvision's alpha = 1: uniform."""
    _, lam = augment.mixup_params(4000, seeded(), "cpu")
    assert stats.kstest(lam.numpy(), stats.beta(1.0, 1.0).cdf).pvalue > 0.01
    assert 0.0 <= lam.min() and lam.max() <= 1.0

"""On-device batching: the uint8 dataset stays on the training device, where each batch is
augmented, then normalised. Seeded from (seed, epoch[, rank]): a resumed run sees the same batches.
"""
import torch
import torch.nn.functional as F

from engine.distributed import mixed_seed

# Models pretrained on ImageNet expect its statistics; everything else gets the training
# split's own (channel_stats).
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def channel_stats(images, chunk=4096):
    """Per-channel mean and std of uint8 images on the [0, 1] scale, in float64 chunks."""
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    for start in range(0, len(images), chunk):
        pixels = images[start:start + chunk].to(torch.float64) / 255
        total += pixels.sum(dim=(0, 2, 3))
        total_sq += (pixels ** 2).sum(dim=(0, 2, 3))
    count = len(images) * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean ** 2).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


class Normalizer:
    """uint8 batch on the device -> normalised float batch at the model's input size."""

    def __init__(self, mean, std, device, image_size=None, channels_last=True):
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)
        self.image_size = image_size
        self.channels_last = channels_last

    def __call__(self, images):
        if images.dtype == torch.uint8:
            images = images.float() / 255
        images = (images - self.mean) / self.std
        if self.image_size is not None and images.shape[-1] != self.image_size:
            # Upsample batch by batch (for ImageNet-sized models) instead of storing big images;
            # antialiasing changes only downsampling, and its kernel is the slower one.
            images = F.interpolate(images, size=(self.image_size, self.image_size),
                                   mode="bilinear", align_corners=False,
                                   antialias=self.image_size < images.shape[-1])
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images


def epoch_generators(seed, epoch, rank, device):
    """(order, augmentation) generators: one order for every rank, on the CPU (a CUDA generator's
    stream depends on the GPU model), and each rank's own augmentation draws."""
    order = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    augmentation = torch.Generator(device=device).manual_seed(mixed_seed(seed, epoch, rank))
    return order, augmentation


class DeviceLoader:
    """(inputs, targets) batches of an ImageData held on `device`; call set_epoch first, as with
    DistributedSampler. batch_size is the global batch: each rank yields its slice."""

    def __init__(self, data, batch_size, device, normalize, *, shuffle, drop_last,
                 augment=None, seed=0, rank=0, world_size=1):
        self.images = data.images.to(device)
        self.labels = data.labels.to(device)
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.normalize = normalize
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.augment = augment
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        if self.drop_last:
            return len(self.labels) // self.batch_size
        return -(-len(self.labels) // self.batch_size)

    def __iter__(self):
        return self.batches()

    def batches(self, start_step=0):
        """The epoch's batches from `start_step` on; skipped ones still draw their augmentation,
        so a resumed epoch gets exactly the batches of an uninterrupted one."""
        order_generator, generator = epoch_generators(self.seed, self.epoch, self.rank,
                                                      self.device)
        count = len(self.labels)
        order = (torch.randperm(count, generator=order_generator).to(self.device)
                 if self.shuffle else torch.arange(count, device=self.device))
        for step in range(len(self)):
            index = order[step * self.batch_size:(step + 1) * self.batch_size]
            index = index.tensor_split(self.world_size)[self.rank]  # this rank's slice
            images, targets = self.images[index], self.labels[index]
            if self.augment is not None:
                images, targets = self.augment(images, targets, generator)
            if step >= start_step:
                yield self.normalize(images), targets

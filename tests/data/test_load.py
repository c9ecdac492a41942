"""load(): the embedded digits, the real tfds code path under tfds.testing.mock_data, and errors.

No test touches the network: tfds datasets are mocked, and the not-prepared tests point
data_dir at empty temporary folders (and fail if tfds would try to download).
"""

import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxnorm.data import DATASETS, DatasetNotPreparedError, load, load_digits, partition_indices, splits_of
from jaxnorm.data.loading import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, CORRUPTIONS, clear_cache

N_MOCK = 30  # -> train 24, validation 6, train_eval 6, full_train 30 (see jaxnorm.data.splits)

TFDS_CASES = {  # name: (image shape, classes, mean, std) with None = computed from full_train
    "cifar10": ((32, 32, 3), 10, CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": ((32, 32, 3), 100, CIFAR100_MEAN, CIFAR100_STD),
    "mnist": ((28, 28, 1), 10, None, None),
    "fashion_mnist": ((28, 28, 1), 10, None, None),
}


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()  # cached loads must not leak between mocks of different sizes
    yield
    clear_cache()


def _rows(images):
    return [x.tobytes() for x in images]


# --------------------------------------------------------------------------- digits


def test_digits_splits_shapes_and_content():
    for name, shape in (("digits", (8, 8, 1)), ("digits32", (32, 32, 3))):
        train, train_eval, test = (load(name, s) for s in ("train", "train_eval", "test"))
        assert (len(train), len(test)) == (1438, 359)
        assert train.image_shape == test.image_shape == shape
        assert train.images.dtype == np.float32 and train.labels.dtype == np.int32
        assert train.num_classes == 10 and train.name == name and test.split == "test"
        ref_x, ref_y = load_digits("train", cifar_shape=name == "digits32")
        np.testing.assert_array_equal(train.images, ref_x)
        np.testing.assert_array_equal(train.labels, ref_y)
        np.testing.assert_array_equal(train_eval.images, train.images)  # train_eval = train for digits
        # Constants: channel mean / population std of the train split, shared by every split.
        np.testing.assert_allclose(train.mean, ref_x.mean(axis=(0, 1, 2), dtype=np.float64), atol=1e-9)
        np.testing.assert_allclose(train.std, ref_x.std(axis=(0, 1, 2), dtype=np.float64), atol=1e-9)
        assert test.mean == train.mean and test.std == train.std
    # Repeating pixels does not change the statistics: digits32 carries digits' constants x3.
    np.testing.assert_allclose(load("digits32").mean, load("digits").mean * 3, atol=1e-9)
    np.testing.assert_allclose(load("digits32").std, load("digits").std * 3, atol=1e-9)


def test_default_is_digits_train_and_results_are_cached_and_read_only():
    ds = load()
    assert (ds.name, ds.split) == ("digits", "train")
    assert load("digits", "train") is ds
    assert not ds.images.flags.writeable and not ds.labels.flags.writeable
    with pytest.raises(ValueError):
        ds.images[0, 0, 0, 0] = 1.0


# --------------------------------------------------------------------------- tfds under mock_data


@pytest.mark.parametrize("name", list(TFDS_CASES))
def test_mocked_tfds_dataset_splits(name):
    shape, classes, mean, std = TFDS_CASES[name]
    with tfds.testing.mock_data(num_examples=N_MOCK):
        raw = tfds.data_source(name, split="train", download=False)
        raw_x = np.stack([raw[i]["image"] for i in range(N_MOCK)])
        raw_y = np.array([raw[i]["label"] for i in range(N_MOCK)])
        ds = {s: load(name, s) for s in splits_of(name)}
    assert set(ds) == {"train", "validation", "train_eval", "full_train", "test"}
    sizes = {s: len(d) for s, d in ds.items()}
    assert sizes == {"train": 24, "validation": 6, "train_eval": 6, "full_train": N_MOCK, "test": N_MOCK}
    for split, d in ds.items():
        assert d.image_shape == shape and d.num_classes == classes and (d.name, d.split) == (name, split)
        assert d.images.dtype == np.float32 and d.labels.dtype == np.int32
        assert 0.0 <= d.images.min() and d.images.max() <= 1.0
        assert 0 <= d.labels.min() and d.labels.max() < classes
    # full_train is the tfds split, in order, scaled by 1/255 (exactly representable steps).
    np.testing.assert_array_equal(ds["full_train"].images, raw_x.astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(ds["full_train"].labels, raw_y)
    # Each partition split is the full split at partition_indices: images and labels stay paired.
    for split in ("train", "validation", "train_eval"):
        idx = partition_indices(N_MOCK, split, seed=0)
        np.testing.assert_array_equal(ds[split].images, ds["full_train"].images[idx])
        np.testing.assert_array_equal(ds[split].labels, ds["full_train"].labels[idx])
    # Disjointness / subset, checked on the data itself (mock images are random, hence distinct).
    train, val, tr_eval = (set(_rows(ds[s].images)) for s in ("train", "validation", "train_eval"))
    assert len(train) == 24 and len(val) == 6
    assert not train & val
    assert tr_eval <= train
    assert sorted(train | val) == sorted(_rows(ds["full_train"].images))
    # Normalization constants: DeepOBS' for CIFAR, else the full training split's channel stats.
    if mean is not None:
        assert ds["test"].mean == mean and ds["test"].std == std
    else:
        full = ds["full_train"].images
        np.testing.assert_allclose(ds["test"].mean, full.mean(axis=(0, 1, 2), dtype=np.float64), atol=1e-7)
        np.testing.assert_allclose(ds["test"].std, full.std(axis=(0, 1, 2), dtype=np.float64), atol=1e-7)
    assert all(d.mean == ds["test"].mean for d in ds.values())


def test_mocked_partition_is_deterministic_and_seeded():
    with tfds.testing.mock_data(num_examples=N_MOCK):
        first = load("cifar10", "validation", seed=0)
        clear_cache()
        again = load("cifar10", "validation", seed=0)
        other = load("cifar10", "validation", seed=1)
    assert again is not first
    np.testing.assert_array_equal(again.images, first.images)
    np.testing.assert_array_equal(again.labels, first.labels)
    assert set(_rows(other.images)) != set(_rows(first.images))


def test_mocked_scaled_partition_for_other_sizes():
    with tfds.testing.mock_data(num_examples=101):  # 101 // 5 = 20 held out
        sizes = [len(load("mnist", s)) for s in ("train", "validation", "train_eval", "full_train")]
    assert sizes == [81, 20, 20, 101]


@pytest.mark.parametrize("name", ["cifar10_corrupted/gaussian_noise_3", "cifar10_corrupted/zoom_blur_5"])
def test_mocked_corrupted_cifar10(name):
    with tfds.testing.mock_data(num_examples=N_MOCK):
        ds = load(name, "test")
    assert ds.image_shape == (32, 32, 3) and len(ds) == N_MOCK and ds.num_classes == 10
    assert ds.images.dtype == np.float32 and 0.0 <= ds.images.min() and ds.images.max() <= 1.0
    assert 0 <= ds.labels.min() and ds.labels.max() < 10
    assert ds.mean == CIFAR10_MEAN and ds.std == CIFAR10_STD  # the model was trained with these
    assert splits_of(name) == ("test",)
    with pytest.raises(ValueError, match="splits"):
        load(name, "train")


def test_registered_corruptions_are_exactly_tfds_configs():
    configs = {c.name for c in tfds.builder_cls("cifar10_corrupted").BUILDER_CONFIGS}
    ours = {n.split("/", 1)[1] for n in DATASETS if n.startswith("cifar10_corrupted/")}
    assert ours == configs and len(ours) == 95 == 5 * len(CORRUPTIONS)
    assert set(DATASETS) - {f"cifar10_corrupted/{c}" for c in configs} == {
        "digits", "digits32", "cifar10", "cifar100", "mnist", "fashion_mnist",
        "mnist1d", "mnist1d_shuffle", "mnist1d_20k", "mnist1d_shuffle_20k",
    }  # fmt: skip


class _FakeSource:
    """A random-access source with a working batched read, like tfds' real ArrayRecordDataSource."""

    def __init__(self, n, shape=(32, 32, 3)):
        self.n, self.shape, self.batched_calls = n, shape, []

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"image": np.full(self.shape, i % 256, np.uint8), "label": np.int64(i % 10)}

    def __getitems__(self, keys):
        self.batched_calls.append(len(keys))
        return [self[k] for k in keys]


def test_reads_in_batches_when_the_source_supports_it(monkeypatch):
    source = _FakeSource(2500)
    monkeypatch.setattr(tfds, "data_source", lambda *a, **k: source)
    ds = load("cifar10", "test")  # (mnist would also read "train" for its constants)
    assert source.batched_calls == [1024, 1024, 452]
    np.testing.assert_array_equal(ds.labels, np.arange(2500) % 10)
    np.testing.assert_array_equal(ds.images[:, 0, 0, 0] * 255, np.arange(2500) % 256)


def test_wrong_image_shape_from_the_source_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(tfds, "data_source", lambda *a, **k: _FakeSource(3, shape=(28, 28, 1)))
    with pytest.raises(ValueError, match=r"expected a uint8 image of shape \(32, 32, 3\)"):
        load("cifar10", "test")


# --------------------------------------------------------------------------- errors


def test_unknown_name_and_split_list_the_known_ones():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'.*'cifar10'.*gaussian_noise"):
        load("imagenet")
    for bad in ("cifar10_corrupted/foo_3", "cifar10_corrupted/gaussian_noise_6", "cifar10_corrupted"):
        with pytest.raises(ValueError, match="unknown dataset"):
            load(bad, "test")
    all_splits = r"\['train', 'validation', 'train_eval', 'full_train', 'test'\]"
    with pytest.raises(ValueError, match=r"'cifar10' has splits " + all_splits):
        load("cifar10", "valid")
    with pytest.raises(ValueError, match=r"has splits \['train', 'train_eval', 'test'\]"):
        load("digits", "validation")
    with pytest.raises(TypeError, match="seed"):
        load("digits", seed=1.5)


class _DownloadAttempted(Exception):
    pass


@pytest.mark.parametrize("name, split", [("cifar10", "train"), ("mnist", "test"), ("cifar10_corrupted/fog_2", "test")])
@pytest.mark.parametrize("subdir", ["", "does/not/exist"])
def test_not_prepared_fails_fast_with_instructions(tmp_path, monkeypatch, name, split, subdir):
    def no_download(*args, **kwargs):
        raise _DownloadAttempted  # not caught by load(): would surface instead of the error below

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_download)
    data_dir = tmp_path / subdir
    start = time.perf_counter()
    with pytest.raises(DatasetNotPreparedError) as info:
        load(name, split, data_dir=data_dir)
    assert time.perf_counter() - start < 2.0
    msg = str(info.value)
    assert repr(name) in msg and str(data_dir) in msg
    assert f"tfds build {name} --file_format=array_record" in msg
    assert "download_and_prepare(file_format='array_record')" in msg
    assert "'digits'" in msg and "offline" in msg
    assert isinstance(info.value, RuntimeError)


@pytest.mark.parametrize("error", [KeyError("splits is empty"), ValueError("no file format"), FileNotFoundError("x")])
def test_other_tfds_not_prepared_signals_are_converted(monkeypatch, error):
    def raising(*args, **kwargs):
        raise error

    monkeypatch.setattr(tfds, "data_source", raising)
    with pytest.raises(DatasetNotPreparedError, match="tfds said: " + type(error).__name__) as info:
        load("cifar100", "test")
    assert info.value.__cause__ is error

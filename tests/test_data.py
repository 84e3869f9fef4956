import numpy as np
import pytest
from PIL import Image

from blackbox_vp.data import load_folder, load_squares, load_task, split


def test_digits_are_upsampled_rgb_with_ten_classes():
    digits = load_task("digits", (40, 40))
    assert digits.images.shape == (1797, 40, 40, 3) and digits.images.dtype == np.uint8
    assert digits.classes == [str(d) for d in range(10)]
    assert np.all(digits.images[..., 0] == digits.images[..., 2])  # grey


def test_digits_are_white_ink_on_black_in_nearest_pixel_blocks_as_in_the_calibration():
    from sklearn.datasets import load_digits

    digits = load_task("digits", (160, 160))  # the inner size of the default 32-pixel border at 224
    source = load_digits().images
    blocks = digits.images[:, ::20, ::20, 0]  # one pixel of each 20x20 block
    np.testing.assert_array_equal(blocks, np.round(source * 255 / 16).astype(np.uint8))  # white ink, black paper
    np.testing.assert_array_equal(digits.images[:, 19::20, 19::20, 0], blocks)  # each block is one flat colour


def test_squares_label_is_count_minus_one_and_deterministic():
    a = load_squares((36, 36), seed=3, count=50)
    b = load_squares((36, 36), seed=3, count=50)
    np.testing.assert_array_equal(a.images, b.images)
    for image, label in zip(a.images, a.labels):
        white_pixels = int((image[..., 0] == 255).sum())
        assert white_pixels == 16 * (label + 1)  # 4x4 squares, one per count
    assert not np.array_equal(a.images, load_squares((36, 36), seed=4, count=50).images)


def test_split_is_deterministic_disjoint_and_stratified():
    digits = load_task("digits", (8, 8))
    s1 = split(digits, 500, 100, 300, seed=7)
    s2 = split(digits, 500, 100, 300, seed=7)
    np.testing.assert_array_equal(s1.test.images, s2.test.images)
    assert (len(s1.train), len(s1.val), len(s1.test)) == (500, 100, 300)
    counts = np.bincount(s1.test.labels, minlength=10)
    assert counts.min() >= 28 and counts.max() <= 32
    tagged = digits.subset(np.arange(len(digits)))
    tagged.images = np.zeros((len(digits), 1, 1, 3), dtype=np.uint8)
    tagged.images[:, 0, 0, 0] = np.arange(len(digits)) % 256
    tagged.images[:, 0, 0, 1] = np.arange(len(digits)) // 256
    parts = split(tagged, 500, 100, 300, seed=7)
    ids = [set((d.images[:, 0, 0, 0].astype(int) + 256 * d.images[:, 0, 0, 1].astype(int)).tolist())
           for d in (parts.train, parts.val, parts.test)]
    assert len(ids[0] | ids[1] | ids[2]) == 900  # disjoint
    s3 = split(digits, 500, 100, 300, seed=8)
    assert not np.array_equal(s1.test.labels, s3.test.labels)


def test_k_shot_takes_exactly_k_per_class():
    digits = load_task("digits", (8, 8))
    s = split(digits, 0, 50, 100, seed=0, shots=4)
    assert np.bincount(s.train.labels).tolist() == [4] * 10


def test_split_too_large_names_the_options():
    digits = load_task("digits", (8, 8))
    with pytest.raises(ValueError, match="--val or --test"):
        split(digits, 10, 1000, 1000, seed=0)


def test_folder_loads_classes_and_names_an_unreadable_file(tmp_path):
    for name, colour in (("cat", 0), ("dog", 255)):
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.new("RGB", (10, 12), (colour, colour, colour)).save(tmp_path / name / f"{i}.png")
    data = load_folder(tmp_path, (16, 16))
    assert data.classes == ["cat", "dog"] and data.labels.tolist() == [0, 0, 1, 1]
    assert data.images.shape == (4, 16, 16, 3) and data.images[3].min() == 255
    (tmp_path / "dog" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.png"):
        load_folder(tmp_path, (16, 16))


def test_unknown_data_is_a_clear_error():
    with pytest.raises(ValueError, match="digits"):
        load_task("no-such-task", (8, 8))

"""Background banks and playback (mummi_jax/envs/backgrounds.py)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mummi_jax.envs import backgrounds as bg


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MUMMI_JAX_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_split_is_disjoint_stable_and_covers_everything():
    names = [f"clip{i}.mp4" for i in range(20)]
    train, test = bg.split_names(names, "train"), bg.split_names(names, "test")
    assert set(train).isdisjoint(test) and set(train) | set(test) == set(names)
    assert 4 <= len(test) <= 8
    assert bg.split_names(list(reversed(names)), "test") == test  # order-independent
    with pytest.raises(ValueError, match="train, test"):
        bg.split_names(names, "valid")


def test_default_bank_is_offline_cached_and_train_differs_from_test(cache):
    train = bg.default_bank("train", size=32, num_clips=3, length=30)
    assert train.shape == (3, 30, 32, 32, 3) and train.dtype == np.uint8
    files = list((cache / "backgrounds").glob("*.npy"))
    assert len(files) == 1 and not list((cache / "backgrounds").glob("*.tmp"))
    np.testing.assert_array_equal(bg.default_bank("train", 32, 3, 30), train)  # from cache
    test = bg.default_bank("test", size=32, num_clips=3, length=30)
    assert not np.array_equal(train, test)
    # The photos behind the two splits are disjoint.
    assert set(bg.split_names(bg.SKIMAGE_PHOTOS, "train")).isdisjoint(
        bg.split_names(bg.SKIMAGE_PHOTOS, "test")
    )
    # Ken-Burns clips move: consecutive frames differ, but only a little (slow pan/zoom).
    step = np.abs(np.diff(train.astype(np.int16), axis=1)).mean(axis=(2, 3, 4))
    assert (step > 0).mean() > 0.9 and step.mean() < 40


def test_folder_of_images_and_videos(tmp_path, cache):
    import av

    folder = tmp_path / "media"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (80, 120, 3), np.uint8)).save(folder / f"p{i}.png")
    with av.open(str(folder / "v.mp4"), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for t in range(12):
            frame = np.full((48, 64, 3), 20 * t, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    banks = {s: bg.folder_bank(folder, s, size=16, num_clips=2, length=10) for s in bg.SPLITS}
    for bank in banks.values():
        assert bank.shape[1:] == (10, 16, 16, 3) and bank.dtype == np.uint8
    assert not np.array_equal(banks["train"][0], banks["test"][0])
    assert bg.load_bank(str(folder), "train", 16, num_clips=2, length=10).shape[0] >= 2


def test_bad_folders_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist.*background='default'"):
        bg.load_bank(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no readable media"):
        bg.load_bank(str(tmp_path / "empty"))
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        (bad / name).write_bytes(b"not a video")
    with pytest.raises(ValueError, match="cannot read background file"):
        bg.folder_bank(bad, "train")
    with pytest.raises(ValueError, match="valid: 'default'"):
        bg.load_bank("sunset")


def test_player_one_clip_per_episode_one_frame_per_step():
    bank = bg.procedural_bank("train", size=8, num_clips=4, length=5)
    player = bg.BackgroundPlayer(bank, seed=0)
    first = player.reset()
    clip = player._clip
    np.testing.assert_array_equal(first, bank[clip, 0])
    frames = [player.advance() for _ in range(6)]
    np.testing.assert_array_equal(frames[0], bank[clip, 1])
    np.testing.assert_array_equal(frames[5], bank[clip, 6 % 5])  # wraps modulo T
    clips = [(player.reset(), player._clip)[1] for _ in range(20)]
    assert len(set(clips)) > 1
    again = bg.BackgroundPlayer(bank, seed=0)
    assert [(again.reset(), again._clip)[1] for _ in range(21)] == [clip] + clips


def test_composite_and_red_threshold():
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = (178, 128, 76)  # robot material colour
    rgb[1, 1] = (90, 150, 200)  # sky
    back = np.full((2, 2, 3), 7, np.uint8)
    mask = bg.red_threshold_mask(rgb)
    assert mask.tolist() == [[True, False], [False, False]]
    out = bg.composite(rgb, back, mask)
    assert out[0, 0].tolist() == [178, 128, 76] and (out[1:] == 7).all()

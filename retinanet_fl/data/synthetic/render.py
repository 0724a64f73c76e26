"""
Drawing one synthetic image: a cluttered, textured background (gradients, blotches, lines, noise)
with distractors on it, and objects of the classes in ``SYNTHETIC_CLASSES``: circles, squares and
triangles, in red or blue. Distractors are those shapes in other colours (yellow, green, white,
black) and other shapes (rings, crosses, stars) in any colour, so both the colour and the shape
decide the class.

Objects and distractors are stacked in a random order, so later ones occlude earlier ones; an item
is only placed where every object under it stays at least half visible (small objects: 80 %) and
where it does not touch an object of its own colour, with which it would merge into one blob. A box
is the extent of the object's *visible* pixels (the modal box, as in COCO), and ``area`` is the
number of visible pixels.
"""

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

# RGB colours. The class colours are saturated; backgrounds stay greyish so they never match one.
CLASS_COLORS: Dict[str, Tuple[int, int, int]] = {"red": (215, 35, 35), "blue": (35, 85, 225)}
CLASS_SHAPES: Tuple[str, ...] = ("circle", "square", "triangle")
DISTRACTOR_COLORS: Dict[str, Tuple[int, int, int]] = {
    "yellow": (235, 205, 35),
    "green": (45, 170, 60),
    "white": (235, 235, 235),
    "black": (20, 20, 20),
}
DISTRACTOR_SHAPES: Tuple[str, ...] = ("ring", "cross", "star")
# Category i + 1 in the JSON is SYNTHETIC_CLASSES[i].
SYNTHETIC_CLASSES: Tuple[str, ...] = tuple(
    f"{colour}_{shape}" for colour in CLASS_COLORS for shape in CLASS_SHAPES
)

# Object sizes are diameters of the circle around the shape, log-uniform in
# [MIN_OBJECT_SIZE, image_size / 2]; unoccluded boxes are 0.7-1x that plus a pixel, so 10 px and up.
MIN_OBJECT_SIZE = 12.0
MAX_OBJECTS_PER_IMAGE = 16
EMPTY_IMAGE_FRACTION = 0.08
# Objects per non-empty image: geometric with this success probability (mean ~3.6, long tail).
OBJECT_COUNT_P = 0.28
DISTRACTORS_PER_IMAGE = 2.5  # Poisson mean
PLACEMENT_TRIES = 20
_SUBPIXEL_BITS = 4  # cv2 drawing with fixed-point coordinates, for smooth sizes and positions


@dataclass
class _PlacedObject:
    """An object drawn so far; ``visible`` shrinks as later items cover it."""

    category_id: int
    base_rgb: Tuple[int, int, int]
    halo: np.ndarray  # (H, W) bool, the full shape grown by one pixel
    min_visible_pixels: float
    visible: np.ndarray  # (H, W) bool


def _shape_polygon(shape: str, size: float, angle: float) -> np.ndarray:
    """(P, 2) vertices around (0, 0) of a polygon inscribed in a circle of diameter ``size``."""
    radius = size / 2.0
    if shape == "square":
        angles = np.deg2rad(angle) + np.pi / 4 + np.arange(4) * np.pi / 2
        radii = np.full(4, radius)
    elif shape == "triangle":
        angles = np.deg2rad(angle) - np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        radii = np.full(3, radius)
    elif shape == "star":
        angles = np.deg2rad(angle) - np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, radius, 0.42 * radius)
    elif shape == "cross":
        # A plus sign with arms a third of its span wide, as a 12-gon.
        a, b = radius / math.sqrt(1 + 1 / 9), radius / (3 * math.sqrt(1 + 1 / 9))
        corners = np.array(
            [
                (b, a),
                (b, b),
                (a, b),
                (a, -b),
                (b, -b),
                (b, -a),
                (-b, -a),
                (-b, -b),
                (-a, -b),
                (-a, b),
                (-b, b),
                (-b, a),
            ]
        )
        theta = np.deg2rad(angle)
        rotation = np.array(
            [[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]]
        )
        return corners @ rotation.T
    else:
        raise ValueError(f"Unknown polygon shape {shape!r}.")
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _shape_mask(
    shape: str, center: np.ndarray, size: float, angle: float, image_size: int
) -> np.ndarray:
    """(H, W) bool mask of a shape; ``size`` is the diameter of its circumscribed circle."""
    mask = np.zeros((image_size, image_size), np.uint8)
    scale = 1 << _SUBPIXEL_BITS
    fixed_center = tuple(int(round(c * scale)) for c in center)
    if shape in ("circle", "ring"):
        radius = size / 2.0
        cv2.circle(
            mask, fixed_center, int(round(radius * scale)), 1, -1, cv2.LINE_8, _SUBPIXEL_BITS
        )
        if shape == "ring":
            inner = radius - max(2.0, 0.35 * radius)
            cv2.circle(
                mask, fixed_center, int(round(inner * scale)), 0, -1, cv2.LINE_8, _SUBPIXEL_BITS
            )
    else:
        vertices = np.round((_shape_polygon(shape, size, angle) + center) * scale).astype(np.int32)
        cv2.fillPoly(mask, [vertices], 1, cv2.LINE_8, _SUBPIXEL_BITS)
    return mask.astype(bool)


def _smooth_noise(rng: np.random.Generator, grid: int, image_size: int, sigma: float) -> np.ndarray:
    """(H, W) float32 noise with about ``grid`` blobs across the image."""
    coarse = rng.standard_normal((grid, grid), dtype=np.float32) * sigma
    return cv2.resize(coarse, (image_size, image_size), interpolation=cv2.INTER_CUBIC)


def _background(rng: np.random.Generator, image_size: int) -> np.ndarray:
    """(H, W, 3) float32 greyish background: gradient, blotches, faint tint, lines."""
    s = image_size
    base = rng.uniform(60, 190) + rng.uniform(-15, 15, size=3)
    image = np.broadcast_to(base.astype(np.float32), (s, s, 3)).copy()
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s
    theta = rng.uniform(0, 2 * np.pi)
    image += (((xx * math.cos(theta) + yy * math.sin(theta)) - 0.5) * rng.uniform(0, 70))[..., None]
    image += _smooth_noise(rng, 4, s, 15.0)[..., None]
    image += np.stack([_smooth_noise(rng, max(s // 8, 2), s, 4.0) for _ in range(3)], axis=-1)
    for _ in range(rng.integers(2, 9)):
        grey = rng.uniform(30, 220) + rng.uniform(-10, 10, size=3)
        start, end = rng.uniform(-0.2 * s, 1.2 * s, size=(2, 2)).astype(int).tolist()
        cv2.line(image, tuple(start), tuple(end), grey.tolist(), int(rng.integers(1, 3)))
    return image


def _jitter_colour(rng: np.random.Generator, rgb: Tuple[int, int, int]) -> np.ndarray:
    colour = (np.asarray(rgb, np.float32) + rng.uniform(-20, 20, size=3)) * rng.uniform(0.8, 1.1)
    return np.clip(colour, 0, 255).astype(np.float32)


def _place(
    rng: np.random.Generator,
    shape: str,
    base_rgb: Tuple[int, int, int],
    image_size: int,
    size: float,
    placed_objects: Sequence[_PlacedObject],
) -> Optional[np.ndarray]:
    """
    (H, W) bool mask of the shape at a position where no placed object drops below its visibility
    minimum nor touches a shape of its own colour (the two would merge into one blob), or None.
    """
    for _ in range(PLACEMENT_TRIES):
        center = rng.uniform(size / 2, image_size - size / 2, size=2)
        angle = rng.uniform(0, 360)
        mask = _shape_mask(shape, center, size, angle, image_size)
        if all(
            np.count_nonzero(obj.visible & ~mask) >= obj.min_visible_pixels
            and not (obj.base_rgb == base_rgb and np.any(obj.halo & mask))
            for obj in placed_objects
        ):
            return mask
    return None


def render_image(
    rng: np.random.Generator,
    image_size: int,
    objects_per_image: Optional[Tuple[int, int]] = None,
    distractors_per_image: float = DISTRACTORS_PER_IMAGE,
    max_object_size: Optional[float] = None,
    class_probs: Optional[np.ndarray] = None,
) -> Tuple[np.ndarray, List[Tuple[int, np.ndarray]]]:
    """
    Args:
        rng: the image's random stream.
        image_size: side of the square image.
        objects_per_image: (min, max): the number of objects to place is uniform in it; None: the
            default count (``EMPTY_IMAGE_FRACTION`` empty images, else geometric, at most
            ``MAX_OBJECTS_PER_IMAGE``). Objects that find no free place are left out.
        distractors_per_image: Poisson mean of the number of distractors.
        max_object_size: largest object (and distractor) diameter; None: half the image.
        class_probs: (K,) probability of each class of ``SYNTHETIC_CLASSES`` for an object; None:
            uniform (drawn as before, so the balanced datasets' images do not change).

    Returns:
        the (H, W, 3) uint8 RGB image and, for each object, (category_id, (H, W) bool visible mask).
    """
    max_size = image_size / 2.0 if max_object_size is None else float(max_object_size)
    min_size = min(MIN_OBJECT_SIZE, max_size)
    if objects_per_image is None:
        num_objects = 0
        if rng.random() >= EMPTY_IMAGE_FRACTION:
            num_objects = min(int(rng.geometric(OBJECT_COUNT_P)), MAX_OBJECTS_PER_IMAGE)
    else:
        num_objects = int(rng.integers(objects_per_image[0], objects_per_image[1] + 1))
    num_distractors = int(rng.poisson(distractors_per_image))
    # Objects and distractors are placed bottom to top in a random order.
    is_object = rng.permutation(
        np.array([True] * num_objects + [False] * num_distractors, dtype=bool)
    )

    image = _background(rng, image_size)
    placed_objects: List[_PlacedObject] = []
    for item_is_object in is_object:
        size = float(np.exp(rng.uniform(np.log(min_size), np.log(max_size))))
        if item_is_object:
            if class_probs is None:
                category_index = int(rng.integers(len(SYNTHETIC_CLASSES)))
            else:
                category_index = int(rng.choice(len(SYNTHETIC_CLASSES), p=class_probs))
            colour_name, shape = SYNTHETIC_CLASSES[category_index].split("_")
            rgb = CLASS_COLORS[colour_name]
        elif rng.random() < 0.5:
            shape = CLASS_SHAPES[rng.integers(len(CLASS_SHAPES))]
            rgb = list(DISTRACTOR_COLORS.values())[rng.integers(len(DISTRACTOR_COLORS))]
        else:
            shape = DISTRACTOR_SHAPES[rng.integers(len(DISTRACTOR_SHAPES))]
            colours = list(DISTRACTOR_COLORS.values()) + list(CLASS_COLORS.values())
            rgb = colours[rng.integers(len(colours))]
        mask = _place(rng, shape, rgb, image_size, size, placed_objects)
        if mask is None:
            continue
        colour = _jitter_colour(rng, rgb)
        image[mask] = colour
        for obj in placed_objects:
            obj.visible &= ~mask
        if item_is_object:
            # Tiny objects are hard enough already: occlude them less.
            min_fraction = 0.8 if size < 2 * min_size else 0.5
            placed_objects.append(
                _PlacedObject(
                    category_id=category_index + 1,
                    base_rgb=rgb,
                    halo=cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool),
                    min_visible_pixels=min_fraction * np.count_nonzero(mask),
                    visible=mask.copy(),
                )
            )

    image *= (1.0 + _smooth_noise(rng, 3, image_size, 0.08))[..., None]
    image += rng.standard_normal(image.shape, dtype=np.float32) * rng.uniform(2, 7)
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return image, [(obj.category_id, obj.visible) for obj in placed_objects]

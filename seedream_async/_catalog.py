"""
The Seedream family: one typed request per model, and one ``ModelSpec`` per model id.

Everything below the client (lifecycle, transport, receiver, poller, limits, journal,
downloads, batch) sees a request only through ``TaskRequest``: its ``model``, its
``local_images``, its ``fingerprint()`` and its ``task_input()``. Adding a model is one
request class here and one line in ``_SPECS``. A model the SDK has no class for is reached
with ``JobRequest(model=..., input={...})``; a field the vendor adds to a typed model, with
``extra_input``.
"""

from __future__ import annotations

import enum
import hashlib
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, Literal, Self, cast

import attrs
from yarl import URL

from ._errors import InvalidRequest
from ._models import (
    EDIT_FIELDS,
    MODEL,
    AspectRatio,
    EditRequest,
    ImageSource,
    LocalImage,
    Quality,
    TaskRequest,
    _member,
    _one_source,
    _one_url,
    canonical_json,
    json_input,
    url_text,
)


class OutputFormat(enum.StrEnum):
    """The file format of Seedream 5 Pro's images."""

    PNG = "png"
    JPEG = "jpeg"


class ImageSize(enum.StrEnum):
    """Seedream v4's image size presets (``square_hd`` by default)."""

    SQUARE_HD = "square_hd"
    SQUARE = "square"
    PORTRAIT_4_3 = "portrait_4_3"
    PORTRAIT_3_2 = "portrait_3_2"
    PORTRAIT_16_9 = "portrait_16_9"
    LANDSCAPE_4_3 = "landscape_4_3"
    LANDSCAPE_3_2 = "landscape_3_2"
    LANDSCAPE_16_9 = "landscape_16_9"
    LANDSCAPE_21_9 = "landscape_21_9"


class ImageResolution(enum.StrEnum):
    """Seedream v4's output resolution (``1K`` by default)."""

    R1K = "1K"
    R2K = "2K"
    R4K = "4K"


# --- field checks, shared by the typed requests ------------------------------------------


def _aspect_ratio(value: AspectRatio | str) -> AspectRatio:
    return _member(AspectRatio, "aspect_ratio", value)


def _aspect_ratio_or_none(value: AspectRatio | str | None) -> AspectRatio | None:
    return None if value is None else _member(AspectRatio, "aspect_ratio", value)


def _quality(value: Quality | str) -> Quality:
    return _member(Quality, "quality", value)


def _quality_or_none(value: Quality | str | None) -> Quality | None:
    return None if value is None else _member(Quality, "quality", value)


def _output_format_or_none(value: OutputFormat | str | None) -> OutputFormat | None:
    return None if value is None else _member(OutputFormat, "output_format", value)


def _image_size(value: ImageSize | str) -> ImageSize:
    return _member(ImageSize, "image_size", value)


def _image_resolution(value: ImageResolution | str) -> ImageResolution:
    return _member(ImageResolution, "image_resolution", value)


def _prompt(least: int, most: int) -> Callable[[object, attrs.Attribute[str], str], None]:
    def check(_: object, __: attrs.Attribute[str], value: str) -> None:
        if not isinstance(value, str):
            raise InvalidRequest("prompt", f"must be a string, got {type(value).__name__}")
        if not value.strip():
            raise InvalidRequest("prompt", "must not be empty")
        if not least <= len(value) <= most:
            raise InvalidRequest(
                "prompt", f"has {len(value)} characters, {least} to {most} allowed"
            )
        try:
            value.encode()
        except UnicodeEncodeError as e:
            raise InvalidRequest(
                "prompt", f"is not valid text: a lone surrogate at character {e.start}"
            ) from None

    return check


def _images(value: Iterable[str | URL | os.PathLike[str]], most: int) -> tuple[ImageSource, ...]:
    if isinstance(value, str | URL | os.PathLike):
        raise InvalidRequest("image_urls", "must be a list of URLs or paths, not a single one")
    if isinstance(value, Mapping | bytes) or not isinstance(value, Iterable):
        raise InvalidRequest("image_urls", f"must be a list of URLs, got {type(value).__name__}")
    urls = tuple(_one_url(v) if type(v) is str else _one_source(v) for v in value)
    if not 1 <= len(urls) <= most:
        raise InvalidRequest("image_urls", f"needs 1 to {most} URLs, got {len(urls)}")
    return urls


def _up_to_14(value: Iterable[str | URL | os.PathLike[str]]) -> tuple[ImageSource, ...]:
    return _images(value, 14)


def _up_to_10(value: Iterable[str | URL | os.PathLike[str]]) -> tuple[ImageSource, ...]:
    return _images(value, 10)


def _input(value: Mapping[str, Any]) -> dict[str, Any]:
    return json_input("input", value)


def _flag(field: str) -> Callable[[object, attrs.Attribute[Any], object], None]:
    def check(_: object, __: attrs.Attribute[Any], value: object) -> None:
        if value is not None and not isinstance(value, bool):
            raise InvalidRequest(field, f"must be a bool or None, got {value!r}")

    return check


def _whole(
    field: str, least: int, most: int
) -> Callable[[object, attrs.Attribute[Any], object], None]:
    def check(_: object, __: attrs.Attribute[Any], value: object) -> None:
        if value is None:
            return
        if type(value) is not int:
            raise InvalidRequest(field, f"must be a whole number, got {value!r}")
        if not least <= value <= most:
            raise InvalidRequest(field, f"is {value}, {least} to {most} allowed")

    return check


def _wire(value: object) -> object:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        if not all(isinstance(u, URL) for u in value):
            raise InvalidRequest("image_urls", "local images must be uploaded before createTask")
        return [url_text(u) for u in value]
    return value


def _fingerprint_value(value: object) -> object:
    if isinstance(value, tuple):
        return [f"sha256:{u.sha256}" if isinstance(u, LocalImage) else url_text(u) for u in value]
    return value.value if isinstance(value, enum.Enum) else value


# --- the typed requests -----------------------------------------------------------------


@attrs.frozen(kw_only=True)
class _TypedRequest:
    """What every typed request but ``EditRequest`` shares (that one predates them all)."""

    model: ClassVar[str]
    #: JSON values sent as they are inside ``input``: a field the vendor added lately.
    extra_input: Mapping[str, Any] = attrs.field(factory=dict, hash=False, kw_only=True)

    def __attrs_post_init__(self) -> None:
        extra = json_input("extra_input", self.extra_input)
        shadowed = sorted(set(extra) & set(typed_fields(type(self))))
        if shadowed:
            raise InvalidRequest(
                "extra_input", f"{shadowed[0]!r} is a field of {type(self).__name__}: set it there"
            )
        object.__setattr__(self, "extra_input", extra)

    @property
    def local_images(self) -> tuple[LocalImage, ...]:
        """The images that are files here (uploaded before createTask)."""
        urls: tuple[ImageSource, ...] = getattr(self, "image_urls", ())
        return tuple(u for u in urls if isinstance(u, LocalImage))

    def task_input(self) -> dict[str, Any]:
        """createTask's ``input`` (every image a URL: upload local ones first)."""
        out = {
            name: _wire(value)
            for name in typed_fields(type(self))
            if (value := getattr(self, name)) is not None
        }
        out.update(self.extra_input)
        return out

    def fingerprint(self) -> str:
        """A stable digest of the model and everything it is asked (a file by its content)."""
        typed = {
            name: _fingerprint_value(value)
            for name in typed_fields(type(self))
            if (value := getattr(self, name)) is not None
        }
        return hashlib.sha256(canonical_json([self.model, typed, self.extra_input])).hexdigest()

    def with_image_urls(self, urls: Sequence[URL]) -> Self:
        """This request with ``image_urls`` replaced (local images, uploaded)."""
        return attrs.evolve(self, image_urls=urls)  # type: ignore[call-arg]

    @classmethod
    def from_input(cls, task_input: Mapping[str, Any]) -> Self:
        """Build one from a createTask ``input`` (the simulator's side); unknown keys go to
        ``extra_input``; ``InvalidRequest`` names a missing or bad field."""
        names = typed_fields(cls)
        for field in attrs.fields(cls):
            if (
                field.name in names
                and field.default is attrs.NOTHING
                and field.name not in task_input
            ):
                raise InvalidRequest(field.name, "is required")
        typed = {k: v for k, v in task_input.items() if k in names}
        extra = {k: v for k, v in task_input.items() if k not in names}
        return cls(**typed, extra_input=extra)


_FIELDS: dict[type, tuple[str, ...]] = {}


def typed_fields(cls: type) -> tuple[str, ...]:
    """The ``input`` fields a typed request class declares, in order."""
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(
            f.name
            for f in attrs.fields(cls)
            if not f.name.startswith("_") and f.name != "extra_input"
        )
    return names


@attrs.frozen(kw_only=True)
class TextToImageRequest(_TypedRequest):
    """Seedream 4.5 text to image: a prompt, no images."""

    model: ClassVar[str] = "seedream/4.5-text-to-image"
    prompt: str = attrs.field(validator=_prompt(1, 3000))
    aspect_ratio: AspectRatio = attrs.field(default=AspectRatio.SQUARE, converter=_aspect_ratio)
    quality: Quality = attrs.field(default=Quality.BASIC, converter=_quality)
    nsfw_checker: bool | None = attrs.field(default=None, validator=_flag("nsfw_checker"))


@attrs.frozen(kw_only=True)
class Seedream5LiteRequest(_TypedRequest):
    """Seedream 5 Lite text to image (``quality`` high is 3K)."""

    model: ClassVar[str] = "seedream/5-lite-text-to-image"
    prompt: str = attrs.field(validator=_prompt(3, 3000))
    aspect_ratio: AspectRatio | None = attrs.field(default=None, converter=_aspect_ratio_or_none)
    quality: Quality | None = attrs.field(default=None, converter=_quality_or_none)


@attrs.frozen(kw_only=True)
class Seedream5LiteEditRequest(_TypedRequest):
    """Seedream 5 Lite image to image: 1 to 14 images (URLs or local files)."""

    model: ClassVar[str] = "seedream/5-lite-image-to-image"
    prompt: str = attrs.field(validator=_prompt(3, 3000))
    image_urls: tuple[ImageSource, ...] = attrs.field(converter=_up_to_14)
    aspect_ratio: AspectRatio | None = attrs.field(default=None, converter=_aspect_ratio_or_none)
    quality: Quality | None = attrs.field(default=None, converter=_quality_or_none)


@attrs.frozen(kw_only=True)
class Seedream5ProRequest(_TypedRequest):
    """Seedream 5 Pro text to image (``quality`` basic is 1K, high 2K)."""

    model: ClassVar[str] = "seedream/5-pro-text-to-image"
    prompt: str = attrs.field(validator=_prompt(3, 5000))
    aspect_ratio: AspectRatio | None = attrs.field(default=None, converter=_aspect_ratio_or_none)
    quality: Quality | None = attrs.field(default=None, converter=_quality_or_none)
    output_format: OutputFormat | None = attrs.field(default=None, converter=_output_format_or_none)


@attrs.frozen(kw_only=True)
class SeedreamV4Request(_TypedRequest):
    """Seedream v4 text to image: up to 6 images per task (``max_images``)."""

    model: ClassVar[str] = "bytedance/seedream-v4-text-to-image"
    prompt: str = attrs.field(validator=_prompt(1, 5000))
    image_size: ImageSize = attrs.field(default=ImageSize.SQUARE_HD, converter=_image_size)
    image_resolution: ImageResolution = attrs.field(
        default=ImageResolution.R1K, converter=_image_resolution
    )
    max_images: int = attrs.field(default=1, validator=_whole("max_images", 1, 6))
    seed: int | None = attrs.field(default=None, validator=_whole("seed", -(2**31), 2**31 - 1))
    nsfw_checker: bool | None = attrs.field(default=None, validator=_flag("nsfw_checker"))


@attrs.frozen(kw_only=True)
class SeedreamV4EditRequest(_TypedRequest):
    """Seedream v4 edit: 1 to 10 images (URLs or local files), up to 6 results."""

    model: ClassVar[str] = "bytedance/seedream-v4-edit"
    prompt: str = attrs.field(validator=_prompt(1, 5000))
    image_urls: tuple[ImageSource, ...] = attrs.field(converter=_up_to_10)
    image_size: ImageSize = attrs.field(default=ImageSize.SQUARE_HD, converter=_image_size)
    image_resolution: ImageResolution = attrs.field(
        default=ImageResolution.R1K, converter=_image_resolution
    )
    max_images: int = attrs.field(default=1, validator=_whole("max_images", 1, 6))
    seed: int | None = attrs.field(default=None, validator=_whole("seed", -(2**31), 2**31 - 1))
    nsfw_checker: bool | None = attrs.field(default=None, validator=_flag("nsfw_checker"))


def _model_id(_: object, __: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not 0 < len(value) <= 128:
        raise InvalidRequest("model", "must be a model id of 1 to 128 characters")
    if not value.isprintable() or value != value.strip() or " " in value:
        raise InvalidRequest("model", f"{value!r} has white space or control characters")


@attrs.frozen(kw_only=True)
class JobRequest:
    """
    Any model on the jobs API, typed or not: ``input`` is sent as it is.

    Only checked for being JSON (string keys, finite numbers, 64-bit integers) and at most
    ``MAX_INPUT_BYTES``: the service validates the rest. Image URLs inside are not uploaded.
    """

    model: str = attrs.field(validator=_model_id)
    input: Mapping[str, Any] = attrs.field(converter=_input, hash=False)

    @property
    def local_images(self) -> tuple[LocalImage, ...]:
        """None: ``input`` is sent as it is."""
        return ()

    def task_input(self) -> dict[str, Any]:
        """createTask's ``input``: the one given."""
        return dict(self.input)

    def fingerprint(self) -> str:
        """A stable digest of the model and its input."""
        return hashlib.sha256(canonical_json([self.model, self.input])).hexdigest()


_ENUMS: dict[str, type[enum.Enum]] = {
    cls.__name__: cls for cls in (AspectRatio, Quality, OutputFormat, ImageSize, ImageResolution)
}


def _choices(field: attrs.Attribute[Any]) -> list[str] | None:
    kind = _ENUMS.get(str(field.type).split(" ")[0])
    return None if kind is None else [str(member.value) for member in kind]


def _plain(default: object) -> object:
    if default is attrs.NOTHING:
        return None
    return default.value if isinstance(default, enum.Enum) else default


# --- the registry -----------------------------------------------------------------------

Kind = Literal["edit", "text to image"]


@attrs.frozen(kw_only=True)
class ModelSpec:
    """One model the SDK types: its id, its request class, and how it is sold."""

    model: str
    request: type[TaskRequest]
    kind: Kind
    #: True when it takes input images (``image_urls``: URLs or local files).
    takes_images: bool
    #: What its price is known by (models of one family and tier cost alike).
    price_key: str
    #: The docs page of its family.
    family: str
    #: Each limited field's rule, in words (``seedream-async models`` shows them).
    limits: Mapping[str, str] = attrs.field(factory=dict)

    def parse(self, task_input: Mapping[str, Any]) -> TaskRequest:
        """Its request from a createTask ``input`` (the simulator's side); unknown keys go to
        ``extra_input``; ``InvalidRequest`` names a missing or bad field."""
        return cast("type[_TypedRequest]", self.request).from_input(task_input)

    def rules(self) -> list[dict[str, Any]]:
        """Each field's rules as data: name, required, default, choices, limits."""
        return [
            {
                "name": f.name,
                "required": f.default is attrs.NOTHING,
                "default": _plain(f.default),
                "choices": _choices(f),
                "limits": self.limits.get(f.name),
            }
            for f in self.fields
        ]

    @property
    def fields(self) -> tuple[attrs.Attribute[Any], ...]:
        """Its typed ``input`` fields."""
        names = typed_fields(self.request) if self.request is not EditRequest else EDIT_FIELDS
        every: tuple[attrs.Attribute[Any], ...] = attrs.fields(self.request)  # type: ignore[arg-type]
        return tuple(f for f in every if f.name in names)


_IMAGES = "JPEG, PNG or WebP of at most 10 MB each: URLs, or local files (uploaded)"
_SPECS = (
    ModelSpec(model=MODEL, request=EditRequest, kind="edit", takes_images=True,
              price_key="seedream-4.5", family="seedream-4.5",
              limits={"prompt": "1 to 3000 characters", "image_urls": f"1 to 14; {_IMAGES}",
                      "quality": "basic is 2K, high 4K"}),
    ModelSpec(model=TextToImageRequest.model, request=TextToImageRequest, kind="text to image",
              takes_images=False, price_key="seedream-4.5", family="seedream-4.5",
              limits={"prompt": "1 to 3000 characters", "quality": "basic is 2K, high 4K"}),
    ModelSpec(model=Seedream5LiteRequest.model, request=Seedream5LiteRequest,
              kind="text to image", takes_images=False, price_key="seedream-5-lite",
              family="seedream-5",
              limits={"prompt": "3 to 3000 characters", "quality": "basic is 2K, high 3K"}),
    ModelSpec(model=Seedream5LiteEditRequest.model, request=Seedream5LiteEditRequest,
              kind="edit", takes_images=True, price_key="seedream-5-lite", family="seedream-5",
              limits={"prompt": "3 to 3000 characters", "image_urls": f"1 to 14; {_IMAGES}",
                      "quality": "basic is 2K, high 3K"}),
    ModelSpec(model=Seedream5ProRequest.model, request=Seedream5ProRequest,
              kind="text to image", takes_images=False, price_key="seedream-5-pro",
              family="seedream-5",
              limits={"prompt": "3 to 5000 characters", "quality": "basic is 1K, high 2K"}),
    ModelSpec(model=SeedreamV4Request.model, request=SeedreamV4Request, kind="text to image",
              takes_images=False, price_key="seedream-v4", family="seedream-v4",
              limits={"prompt": "1 to 5000 characters", "max_images": "1 to 6 result images",
                      "seed": "a 32-bit integer"}),
    ModelSpec(model=SeedreamV4EditRequest.model, request=SeedreamV4EditRequest, kind="edit",
              takes_images=True, price_key="seedream-v4", family="seedream-v4",
              limits={"prompt": "1 to 5000 characters", "image_urls": f"1 to 10; {_IMAGES}",
                      "max_images": "1 to 6 result images", "seed": "a 32-bit integer"}),
)  # fmt: skip
#: Every typed model, by id.
MODELS: Mapping[str, ModelSpec] = {spec.model: spec for spec in _SPECS}
#: The request classes the client takes (``isinstance`` against a tuple: no protocol walk).
REQUEST_TYPES: tuple[type, ...] = (*(spec.request for spec in _SPECS), JobRequest)
DEFAULT_TEXT_MODEL = TextToImageRequest.model


def is_request(value: object) -> bool:
    """True for a request the client can send."""
    return type(value) is EditRequest or isinstance(value, REQUEST_TYPES)


def typed_models() -> tuple[ModelSpec, ...]:
    """Every model the SDK types, in the order its docs list them."""
    return _SPECS


def spec_for(model: str) -> ModelSpec:
    """The spec of a typed model; ``InvalidRequest`` names the typed ones otherwise."""
    spec = MODELS.get(model)
    if spec is None:
        known = ", ".join(MODELS)
        raise InvalidRequest(
            "model", f"{model!r} is not a typed model ({known}); JobRequest reaches any other"
        )
    return spec


def model_of(request: object) -> str:
    """The model id of a request (a constant for ``EditRequest``: no lookup)."""
    return MODEL if type(request) is EditRequest else str(getattr(request, "model", MODEL))

"""Factories for the director tests (no tests here; imported by tests/fleet/test_director_*)."""

import hashlib

import factory
from director_keys import own_director_key  # noqa: F401 - re-exported
from django.contrib.auth.models import User

from ota.models import Artifact, Model

HW = "linux-x86_64-fp32"


class UserFactory(factory.django.DjangoModelFactory[User]):
    class Meta:
        model = User
        django_get_or_create = ("username",)

    username = "ci"


class ModelFactory(factory.django.DjangoModelFactory[Model]):
    class Meta:
        model = Model
        django_get_or_create = ("name",)

    name = "kws"


class ArtifactFactory(factory.django.DjangoModelFactory[Artifact]):
    """An artifact row as the publishing service would leave it (no TUF metadata)."""

    class Meta:
        model = Artifact

    model = factory.SubFactory(ModelFactory)
    version = "1.0.0"
    hardware = HW
    format = "onnx"
    release_counter = 1
    target_path = factory.LazyAttribute(
        lambda a: f"models/{a.model.name}/{a.version}/{a.hardware}/model.onnx"
    )
    sha256 = factory.LazyAttribute(lambda a: hashlib.sha256(a.target_path.encode()).hexdigest())
    length = 1000
    storage_key = factory.LazyAttribute(lambda a: a.target_path)
    published_by = factory.SubFactory(UserFactory)
    metadata_version = 1

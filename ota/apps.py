from django.apps import AppConfig


class OtaConfig(AppConfig):
    name = "ota"
    verbose_name = "Models and rollouts"

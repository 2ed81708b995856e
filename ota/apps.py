from django.apps import AppConfig


class OtaConfig(AppConfig):
    name = "ota"
    verbose_name = "Models and rollouts"

    def ready(self) -> None:
        # What the registry below tells rollouts, and asks of the model registry
        # (fleet/hooks.py, docs/architecture.md).
        from fleet import hooks
        from ota import rollouts, selectors, tasks, tracking

        hooks.on_device_news(tracking.tracking_news_record)
        hooks.on_event_stored(tasks.rollout_evaluate_on_commit)
        hooks.tuf_root_from(selectors.tuf_root)
        hooks.model_names_from(selectors.model_names)
        hooks.tuf_expiries_from(selectors.tuf_expiries)
        hooks.live_rollouts_from(selectors.live_rollouts)
        rollouts.evaluation_queue_from(tasks.rollout_evaluate_queue)

from django.db import migrations, models
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.migrations.state import StateApps


def _existing_tokens_keep_their_rights(apps: StateApps, schema: BaseDatabaseSchemaEditor) -> None:
    # Tokens made before scopes acted with every right of their user; "user" keeps that.
    apps.get_model("fleet", "ApiToken").objects.update(scopes=["user"], model_names=["*"])


class Migration(migrations.Migration):
    dependencies = [
        ("fleet", "0009_desired_outbox"),
    ]

    operations = [
        migrations.AddField(
            model_name="apitoken",
            name="expires_at",
            field=models.DateTimeField(blank=True, help_text="empty: never", null=True),
        ),
        migrations.AddField(
            model_name="apitoken",
            name="model_names",
            field=models.JSONField(
                blank=True,
                default=list,
                help_text="models the token may act on; * for every model",
            ),
        ),
        migrations.AddField(
            model_name="apitoken",
            name="scopes",
            field=models.JSONField(
                blank=True,
                default=list,
                help_text="publish, rollouts:create, rollouts:operate, fleet:read",
            ),
        ),
        migrations.RunPython(_existing_tokens_keep_their_rights, migrations.RunPython.noop),
    ]

"""Fleet OTA settings: one file, driven by environment variables.

With nothing set, everything runs embedded on one machine: SQLite and local files
under ``FLEET_DATA_DIR`` (default ``./var``), Celery tasks run eagerly. Production
differs only in its environment (``FLEET_MODE=production``), and start-up stops with
a message naming the variable when something required there is missing or wrong.
See docs/operator-guide.md for every variable.
"""

import ipaddress
import os
import secrets
from datetime import timedelta
from pathlib import Path
from typing import Any

import dj_database_url
import django_stubs_ext
from celery.schedules import crontab
from django.core.exceptions import ImproperlyConfigured
from rest_framework import serializers

from device_agent.protocol.fsutil import create_once
from fleet.path_converters import openapi_path_overrides

# Lets the admin and serializer classes be written with their type parameters.
django_stubs_ext.monkeypatch(
    extra_classes=[serializers.Serializer, serializers.ModelSerializer, serializers.ListSerializer]
)

BASE_DIR = Path(__file__).resolve().parent.parent


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def _env_bool(name: str, default: bool) -> bool:
    raw = _env(name)
    if not raw:
        return default
    if raw.lower() in {"1", "true", "yes", "on"}:
        return True
    if raw.lower() in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean: use true or false.")


def _env_int(name: str, default: int, *, minimum: int = 0) -> int:
    raw = _env(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer.") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name}={value} must be at least {minimum}.")
    return value


FLEET_MODE = _env("FLEET_MODE", "embedded")
if FLEET_MODE not in {"embedded", "production"}:
    raise ImproperlyConfigured(
        f"FLEET_MODE={FLEET_MODE!r}: use 'embedded' (the default) or 'production'."
    )
PRODUCTION = FLEET_MODE == "production"


def _require(name: str, why: str) -> str:
    value = _env(name)
    if PRODUCTION and not value:
        raise ImproperlyConfigured(f"FLEET_MODE=production needs {name}: {why}")
    return value


FLEET_DATA_DIR = Path(_env("FLEET_DATA_DIR", str(BASE_DIR / "var"))).resolve()
FLEET_KEYS_DIR = Path(_env("FLEET_KEYS_DIR", str(FLEET_DATA_DIR / "keys"))).resolve()


def _private_dir(path: Path) -> None:
    """Create the data directory owner-only: it holds the secret key, keys and the database.

    An existing one of ours with a wider mode (an older quick start) is narrowed too.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid == os.getuid() and info.st_mode & 0o077:
        path.chmod(0o700)


def _private_file(path: Path) -> None:
    """Create an empty file owner-only before a library opens it with the umask's mode.

    SQLite creates its journal and WAL files with the mode of the database file.
    """
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    info = path.stat()
    if info.st_uid == os.getuid() and info.st_mode & 0o077:
        path.chmod(0o600)


def _embedded_secret_key() -> str:
    # Generated once per data directory so sessions survive restarts; never in the repo.
    # Processes starting together (a fresh embedded start) may all create it: one wins.
    path = FLEET_DATA_DIR / "secret_key"
    if not path.exists():
        _private_dir(FLEET_DATA_DIR)
        create_once(path, secrets.token_urlsafe(50).encode(), mode=0o600)
    return path.read_text().strip()


SECRET_KEY = (
    _require(
        "DJANGO_SECRET_KEY",
        "a long random string, e.g. `python -c 'import secrets; "
        "print(secrets.token_urlsafe(50))'`.",
    )
    or _embedded_secret_key()
)
if PRODUCTION and len(SECRET_KEY) < 40:
    raise ImproperlyConfigured("DJANGO_SECRET_KEY must be at least 40 characters long.")

DEBUG = _env_bool("DJANGO_DEBUG", not PRODUCTION)
_hosts = _require("DJANGO_ALLOWED_HOSTS", "the comma-separated host names the API is served on.")
ALLOWED_HOSTS = (
    [h.strip() for h in _hosts.split(",") if h.strip()]
    if _hosts
    else ["localhost", "127.0.0.1", "[::1]", "testserver"]
)
CSRF_TRUSTED_ORIGINS = [
    o.strip() for o in _env("DJANGO_CSRF_TRUSTED_ORIGINS").split(",") if o.strip()
]

INSTALLED_APPS = [
    "ota.admin_apps.FleetAdminConfig",  # django.contrib.admin with the fleet overview
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "fleet",
    "ota",
    "telemetry",
    "axes",
]

MIDDLEWARE = [
    "fleet.middleware.ErrorEnvelopeMiddleware",
    "fleet.middleware.RejectNulMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last: turns a login refused during a lockout into its 429 page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "fleet.urls"
WSGI_APPLICATION = "fleet.wsgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        # Before the apps' own: the project's overrides of the admin's templates.
        "DIRS": [BASE_DIR / "fleet" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- database -------------------------------------------------------------------------
_database_url = _require(
    "DATABASE_URL", "postgres://USER:PASSWORD@HOST:5432/NAME of the PostgreSQL database."
)
if _database_url:
    try:
        _db: dict[str, Any] = dict(
            dj_database_url.parse(_database_url, conn_max_age=_env_int("FLEET_DB_CONN_MAX_AGE", 60))
        )
    except ValueError as exc:
        raise ImproperlyConfigured(f"DATABASE_URL is not a database URL: {exc}") from None
    if PRODUCTION and _db["ENGINE"] != "django.db.backends.postgresql":
        raise ImproperlyConfigured("FLEET_MODE=production needs a postgres:// DATABASE_URL.")
else:
    _private_dir(FLEET_DATA_DIR)
    _private_file(FLEET_DATA_DIR / "fleet.sqlite3")
    _db = {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": FLEET_DATA_DIR / "fleet.sqlite3",
        "OPTIONS": {"transaction_mode": "IMMEDIATE", "timeout": 20},
        # A file, not shared-cache memory: concurrent writers then wait on the lock
        # (as in the quick start) instead of failing with "table is locked".
        "TEST": {"NAME": str(FLEET_DATA_DIR / "test.sqlite3")},
    }
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- artifact storage -------------------------------------------------------------------
FLEET_STORAGE = _env("FLEET_STORAGE", "local")
if FLEET_STORAGE == "local":
    FLEET_ARTIFACT_DIR = Path(_env("FLEET_ARTIFACT_DIR", str(FLEET_DATA_DIR / "artifacts")))
    _artifact_storage: dict[str, Any] = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(FLEET_ARTIFACT_DIR), "file_permissions_mode": 0o640},
    }
elif FLEET_STORAGE == "s3":
    _bucket = _env("AWS_STORAGE_BUCKET_NAME")
    if not _bucket:
        raise ImproperlyConfigured(
            "FLEET_STORAGE=s3 needs AWS_STORAGE_BUCKET_NAME (and AWS_ACCESS_KEY_ID, "
            "AWS_SECRET_ACCESS_KEY, AWS_S3_REGION_NAME; AWS_S3_ENDPOINT_URL for an "
            "S3-compatible server)."
        )
    _artifact_storage = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": _bucket,
            "endpoint_url": _env("AWS_S3_ENDPOINT_URL") or None,
            "region_name": _env("AWS_S3_REGION_NAME") or None,
            "file_overwrite": False,
            "default_acl": None,
            "querystring_auth": True,
            "querystring_expire": _env_int("FLEET_S3_URL_EXPIRY_SECONDS", 3600, minimum=60),
            "location": _env("FLEET_S3_PREFIX"),
        },
    }
else:
    raise ImproperlyConfigured(f"FLEET_STORAGE={FLEET_STORAGE!r}: use 'local' or 's3'.")

STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    "artifacts": _artifact_storage,
}
STATIC_URL = "static/"
STATIC_ROOT = FLEET_DATA_DIR / "static"

# Artifact uploads stream to a temporary file; nothing above this size is kept.
FLEET_MAX_ARTIFACT_BYTES = _env_int("FLEET_MAX_ARTIFACT_BYTES", 4 * 1024**3, minimum=1)
FLEET_MAX_METADATA_BYTES = _env_int("FLEET_MAX_METADATA_BYTES", 8 * 1024**2, minimum=1024)
FILE_UPLOAD_MAX_MEMORY_SIZE = 256 * 1024
DATA_UPLOAD_MAX_MEMORY_SIZE = FLEET_MAX_METADATA_BYTES
FILE_UPLOAD_TEMP_DIR = _env("FLEET_UPLOAD_TEMP_DIR") or None
FILE_UPLOAD_HANDLERS = ["ota.uploads.HashingUploadHandler"]

# --- TUF image repository ----------------------------------------------------------------
# Root and targets keys belong offline in production: there the server holds only the
# online snapshot and timestamp keys, and root/targets changes take key files on the
# command line (docs/security.md).
FLEET_TUF_TIMESTAMP_EXPIRY = timedelta(hours=_env_int("FLEET_TUF_TIMESTAMP_HOURS", 24, minimum=1))
FLEET_TUF_SNAPSHOT_EXPIRY = timedelta(days=_env_int("FLEET_TUF_SNAPSHOT_DAYS", 7, minimum=1))
FLEET_TUF_TARGETS_EXPIRY = timedelta(days=_env_int("FLEET_TUF_TARGETS_DAYS", 365, minimum=1))
FLEET_TUF_ROOT_EXPIRY = timedelta(days=_env_int("FLEET_TUF_ROOT_DAYS", 365, minimum=1))
FLEET_PUBLIC_URL = _env("FLEET_PUBLIC_URL", "http://127.0.0.1:8000").rstrip("/")

# --- devices and MQTT ---------------------------------------------------------------------
# The broker URL handed to devices at enrollment (mqtts://host:8883 in production).
FLEET_MQTT_URL = _env("FLEET_MQTT_URL", "mqtt://127.0.0.1:1883")
FLEET_DEVICE_CERT_DAYS = _env_int("FLEET_DEVICE_CERT_DAYS", 365, minimum=1)
# Written on every revocation; point Mosquitto's `crlfile` at it and SIGHUP the broker.
FLEET_CRL_PATH = Path(_env("FLEET_CRL_PATH", str(FLEET_DATA_DIR / "mqtt" / "crl.pem")))
# The bridge: the control plane's only MQTT client (fleet/bridge/config.py has the rest).
FLEET_MQTT_BRIDGE_URL = _env("FLEET_MQTT_BRIDGE_URL", "mqtt://127.0.0.1:1883")
FLEET_MQTT_BRIDGE_CA_FILE = _env("FLEET_MQTT_BRIDGE_CA_FILE")
FLEET_MQTT_BRIDGE_CERT_FILE = _env("FLEET_MQTT_BRIDGE_CERT_FILE")
FLEET_MQTT_BRIDGE_KEY_FILE = _env("FLEET_MQTT_BRIDGE_KEY_FILE")
FLEET_BRIDGE_CLIENT_ID = _env("FLEET_BRIDGE_CLIENT_ID", "fleet-bridge")
FLEET_BRIDGE_USE_SHARED = _env_bool("FLEET_BRIDGE_USE_SHARED", True)
FLEET_BRIDGE_PROTOCOL = _env("FLEET_BRIDGE_PROTOCOL", "5")
if FLEET_BRIDGE_PROTOCOL not in {"5", "3.1.1"}:
    raise ImproperlyConfigured("FLEET_BRIDGE_PROTOCOL must be 5 or 3.1.1.")
if (
    PRODUCTION
    and FLEET_MQTT_BRIDGE_URL.startswith("mqtts://")
    and not (FLEET_MQTT_BRIDGE_CERT_FILE and FLEET_MQTT_BRIDGE_KEY_FILE)
):
    raise ImproperlyConfigured(
        "FLEET_MQTT_BRIDGE_CERT_FILE and FLEET_MQTT_BRIDGE_KEY_FILE are needed for mqtts:// "
        "(the bridge's client certificate from `manage.py mqtt_certs`)."
    )
FLEET_DESIRED_TTL = timedelta(days=_env_int("FLEET_DESIRED_TTL_DAYS", 7, minimum=1))
# When set, revocations also rewrite this ACL file (the template plus a deny block per
# revoked device) so a connected revoked device loses its rights at the broker's reload.
FLEET_MQTT_ACL_PATH = _env("FLEET_MQTT_ACL_PATH")
FLEET_MQTT_ACL_TEMPLATE = Path(
    _env("FLEET_MQTT_ACL_TEMPLATE", str(BASE_DIR / "deploy" / "mosquitto" / "acl"))
)
FLEET_ENROLLMENT_TOKEN_HOURS = _env_int("FLEET_ENROLLMENT_TOKEN_HOURS", 24, minimum=1)

# --- REST API -----------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "fleet.auth.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "fleet.pagination.ById",
    "DEFAULT_PARSER_CLASSES": [
        "fleet.parsers.JSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    # JSON only: the browsable API would answer a browser's errors with HTML pages.
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "fleet.negotiation.FirstFormatNegotiation",
    "PAGE_SIZE": 100,
    "EXCEPTION_HANDLER": "fleet.errors.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Fleet OTA API",
    "DESCRIPTION": "Signed ML-model artifacts, TUF metadata and rollouts for edge fleets.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Path parameters with their identifier alphabets (docs/api.md, Identifiers).
    "PATH_CONVERTER_OVERRIDES": openapi_path_overrides(),
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "fleet.schema.error_responses",
    ],
}

# --- rollouts -------------------------------------------------------------------------------
# How often the beat evaluates every active rollout (start and bake times, timeouts,
# pacing); device events trigger evaluations in between.
FLEET_ROLLOUT_TICK_SECONDS = _env_int("FLEET_ROLLOUT_TICK_SECONDS", 30, minimum=5)
# Device events queue an evaluation of their rollout at most this often from one bridge
# (milliseconds); the events that may finish a stage queue theirs at once (docs/rollouts.md).
# Each evaluation reads the devices with news, so fewer evaluations save worker and
# database CPU.
FLEET_ROLLOUT_EVENT_EVALUATION_MS = _env_int("FLEET_ROLLOUT_EVENT_EVALUATION_MS", 500, minimum=10)
# How often telemetry gates and automatic A/B promotion query telemetry (at most).
FLEET_ROLLOUT_TELEMETRY_INTERVAL_SECONDS = _env_int(
    "FLEET_ROLLOUT_TELEMETRY_INTERVAL_SECONDS", 60, minimum=1
)
# Dotted path of the telemetry gates' data source (ota.gates.TelemetrySource); empty: no
# telemetry data yet, so telemetry gates report insufficient_data.
FLEET_ROLLOUT_TELEMETRY_SOURCE = _env(
    "FLEET_ROLLOUT_TELEMETRY_SOURCE", "telemetry.selectors.rollout_arm_device_values"
)

# --- Celery ---------------------------------------------------------------------------------
CELERY_BROKER_URL = _env("CELERY_BROKER_URL")
CELERY_TASK_ALWAYS_EAGER = not CELERY_BROKER_URL
if CELERY_BROKER_URL.startswith("filesystem://"):
    # The embedded default's queue (deploy/dev/up): kombu's filesystem transport, a
    # directory of message files under the data dir, so the quick start runs a real Celery
    # worker and beat with no broker service. One machine only; production uses
    # RabbitMQ or Redis.
    _celery_queue = FLEET_DATA_DIR / "celery" / "queue"
    _celery_queue.mkdir(parents=True, exist_ok=True)
    (FLEET_DATA_DIR / "celery" / "control").mkdir(exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_celery_queue),
        "data_folder_out": str(_celery_queue),
        "control_folder": str(FLEET_DATA_DIR / "celery" / "control"),
        "store_processed": False,
        "polling_interval": 0.5,
    }
CELERY_TASK_EAGER_PROPAGATES = True
# Celery's Django fixup closes the database connection before and after every task unless
# this is set: each rollout evaluation (one per batch of device events) would open a new
# PostgreSQL session, a backend forked with cold caches. With it the worker keeps its
# connection for this many tasks; fleet/celery.py closes it sooner when it is broken or
# older than CONN_MAX_AGE, as Django does between requests.
CELERY_DB_REUSE_MAX = 1000
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE = {
    "tuf-refresh-timestamp": {
        "task": "ota.tasks.tuf_refresh_task",
        "schedule": crontab(minute="*/15"),
    },
    "director-reissue-expiring": {
        "task": "fleet.tasks.desired_reissue_expiring_task",
        "schedule": crontab(minute=7),  # hourly, clear of the TUF refresh
    },
    "crl-refresh": {
        "task": "fleet.tasks.crl_refresh_task",
        "schedule": crontab(minute=23, hour=3),  # daily: the CRL's nextUpdate is 30 days out
    },
    "rollouts-tick": {
        "task": "ota.tasks.rollouts_tick_task",
        "schedule": timedelta(seconds=FLEET_ROLLOUT_TICK_SECONDS),
    },
}
if PRODUCTION and (not CELERY_BROKER_URL or CELERY_BROKER_URL.startswith("filesystem://")):
    raise ImproperlyConfigured(
        "FLEET_MODE=production needs CELERY_BROKER_URL (amqp://... or redis://...); "
        "filesystem:// is the single-machine development queue."
    )

# --- telemetry and metrics (issue 5) ---------------------------------------------------------
# A sample is stored only when its timestamp is within [received - MAX_AGE, received +
# MAX_FUTURE] and (by default) its model is registered; otherwise it is dropped and counted.
FLEET_TELEMETRY_MAX_AGE = timedelta(
    seconds=_env_int("FLEET_TELEMETRY_MAX_AGE_SECONDS", 7 * 86400, minimum=60)
)
FLEET_TELEMETRY_MAX_FUTURE = timedelta(
    seconds=_env_int("FLEET_TELEMETRY_MAX_FUTURE_SECONDS", 600, minimum=0)
)
FLEET_TELEMETRY_REQUIRE_KNOWN_MODEL = _env_bool("FLEET_TELEMETRY_REQUIRE_KNOWN_MODEL", True)
FLEET_TELEMETRY_MODEL_CACHE_SECONDS = _env_int("FLEET_TELEMETRY_MODEL_CACHE_SECONDS", 10)
FLEET_TELEMETRY_MAX_BUFFER_ROWS = _env_int(
    "FLEET_TELEMETRY_MAX_BUFFER_ROWS", 1_000_000, minimum=1000
)
# Latency and confidence histograms by model version and arm, observed by the bridge.
FLEET_TELEMETRY_MODEL_METRICS = _env_bool("FLEET_TELEMETRY_MODEL_METRICS", True)
# The metrics exported per rollout arm (fleet_telemetry_arm_stat) for gates and dashboards.
FLEET_TELEMETRY_GATE_METRICS = [
    m.strip()
    for m in _env("FLEET_TELEMETRY_GATE_METRICS", "latency_ms,confidence").split(",")
    if m.strip()
]
# Raw samples are kept RAW_RETENTION; hourly rollups are computed from them before they go.
FLEET_TELEMETRY_RAW_RETENTION = timedelta(
    days=_env_int("FLEET_TELEMETRY_RAW_RETENTION_DAYS", 14, minimum=1)
)
FLEET_TELEMETRY_MINUTE_ROLLUP_RETENTION = timedelta(
    days=_env_int("FLEET_TELEMETRY_MINUTE_ROLLUP_DAYS", 30, minimum=1)
)
FLEET_TELEMETRY_HOUR_ROLLUP_RETENTION = timedelta(
    days=_env_int("FLEET_TELEMETRY_HOUR_ROLLUP_DAYS", 400, minimum=1)
)
# How far back each rollup run recomputes buckets, to take in samples that arrive late.
FLEET_TELEMETRY_ROLLUP_LATENESS = timedelta(
    seconds=_env_int("FLEET_TELEMETRY_ROLLUP_LATENESS_SECONDS", 300, minimum=60)
)
if FLEET_TELEMETRY_MAX_AGE >= FLEET_TELEMETRY_RAW_RETENTION:
    raise ImproperlyConfigured(
        "FLEET_TELEMETRY_MAX_AGE_SECONDS must be shorter than FLEET_TELEMETRY_RAW_RETENTION_DAYS: "
        "older samples would be deleted as soon as they were stored."
    )
CELERY_BEAT_SCHEDULE["telemetry-rollup"] = {
    "task": "telemetry.tasks.telemetry_rollup_task",
    "schedule": crontab(),  # every minute
}
CELERY_BEAT_SCHEDULE["telemetry-retention"] = {
    "task": "telemetry.tasks.telemetry_retention_task",
    "schedule": crontab(minute=41, hour=2),  # daily
}
# GET /metrics on the web process: allowed with `Authorization: Bearer <FLEET_METRICS_TOKEN>`
# or from an address in FLEET_METRICS_ALLOW (CIDRs; loopback by default, none in
# production). FLEET_METRICS_WEB=false removes the route: then run `manage.py metrics_serve`
# on a separate port. Under gunicorn see telemetry/gunicorn.py (PROMETHEUS_MULTIPROC_DIR).
FLEET_METRICS_WEB = _env_bool("FLEET_METRICS_WEB", True)
FLEET_METRICS_TOKEN = _env("FLEET_METRICS_TOKEN")
if FLEET_METRICS_TOKEN and len(FLEET_METRICS_TOKEN) < 16:
    raise ImproperlyConfigured("FLEET_METRICS_TOKEN must be at least 16 characters long.")
FLEET_METRICS_ALLOW = [
    c.strip()
    for c in _env("FLEET_METRICS_ALLOW", "" if PRODUCTION else "127.0.0.1/32,::1/128").split(",")
    if c.strip()
]
FLEET_METRICS_DB_CACHE_SECONDS = _env_int("FLEET_METRICS_DB_CACHE_SECONDS", 5)
FLEET_METRICS_MAX_SERIES = _env_int("FLEET_METRICS_MAX_SERIES", 1000, minimum=1)
# A dotted path to a function returning telemetry.metrics.RolloutArmProgress items.
FLEET_METRICS_ROLLOUT_SOURCE = _env(
    "FLEET_METRICS_ROLLOUT_SOURCE", "ota.rollout_selectors.rollout_arm_progress"
)
try:
    for _cidr in FLEET_METRICS_ALLOW:
        ipaddress.ip_network(_cidr, strict=False)
except ValueError as exc:
    raise ImproperlyConfigured(f"FLEET_METRICS_ALLOW: {exc}") from None

# --- security -------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = PRODUCTION

# Reverse proxies in front of the web server whose X-Forwarded-For entries are believed
# (0: none, the client is REMOTE_ADDR). Login lockouts and the enrollment throttle count
# per client address, so a wrong number lets a client choose its own (fleet/client_ip.py).
FLEET_TRUSTED_PROXIES = _env_int("FLEET_TRUSTED_PROXIES", 0)
REST_FRAMEWORK["NUM_PROXIES"] = FLEET_TRUSTED_PROXIES  # DRF's own throttles agree

# Counters shared by every web worker (the enrollment throttle): Redis when
# FLEET_CACHE_URL is set, else files under the data directory (one machine only).
_cache_url = _env("FLEET_CACHE_URL")
if _cache_url and not _cache_url.startswith(("redis://", "rediss://", "unix://")):
    raise ImproperlyConfigured(f"FLEET_CACHE_URL={_cache_url!r}: use redis://HOST:6379/N.")
CACHES = {
    "default": (
        {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": _cache_url}
        if _cache_url
        else {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(FLEET_DATA_DIR / "cache"),
        }
    )
}

# Password logins (the admin): django-axes counts failures per account and per client
# address in the database, which every worker shares and the admin shows ("Access
# attempts": delete a row to lift its lockout; `manage.py axes_reset`). Its backend comes
# first, so a locked-out attempt is refused before any password is hashed.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_HANDLER = "axes.handlers.database.AxesDatabaseHandler"
AXES_FAILURE_LIMIT = _env_int("FLEET_LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=_env_int("FLEET_LOGIN_LOCKOUT_MINUTES", 15, minimum=1))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_CLIENT_IP_CALLABLE = "fleet.client_ip.client_ip"
AXES_RESET_ON_SUCCESS = True
AXES_HTTP_RESPONSE_CODE = 429
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
if PRODUCTION:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "filters": {"requests": {"()": "fleet.logs.RequestLogFilter"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": ["requests"],
        }
    },
    "root": {"handlers": ["console"], "level": _env("FLEET_LOG_LEVEL", "INFO")},
    # Django's defaults give "django" a handler of its own (a second copy of every
    # request line with DEBUG) and "django.server" another: all go through "console".
    "loggers": {
        "django": {"handlers": [], "propagate": True},
        "django.server": {"handlers": ["console"], "propagate": False},
    },
}

"""Model paths: only models/<name>/<version>/<hardware>/<file>, matching the entry."""

import json
from typing import Any

import pytest

from device_agent.protocol.errors import ErrorCode
from device_agent.protocol.exceptions import ProtocolError
from device_agent.protocol.messages import TargetPath, parse_desired, split_target_path


def test_split_valid_path() -> None:
    assert split_target_path("models/kws/1.4.0-rc.1+b7/esp32s3-int8/model.tflite") == TargetPath(
        "kws", "1.4.0-rc.1+b7", "esp32s3-int8", "model.tflite"
    )


@pytest.mark.parametrize(
    "path",
    [
        "/models/kws/1.4.0/esp32s3-int8/model.tflite",
        "models/kws/1.4.0/esp32s3-int8/../model.tflite",
        "models/../kws/1.4.0/esp32s3-int8/model.tflite",
        "models/kws/1.4.0/esp32s3-int8/..",
        "models/kws/1.4.0/./model.tflite",
        "models/kws/1.4.0/esp32s3-int8\\model.tflite",
        "models\\kws\\1.4.0\\esp32s3-int8\\model.tflite",
        "models/kws//1.4.0/esp32s3-int8/model.tflite",
        "models/kws/1.4.0/esp32s3-int8/model.tflite/",
        "models/kws/1.4.0/esp32s3-int8/",
        "models/kws/1.4.0/model.tflite",
        "models/kws/1.4.0/esp32s3-int8/sub/model.tflite",
        "targets/kws/1.4.0/esp32s3-int8/model.tflite",
        "models/kws/not-semver/esp32s3-int8/model.tflite",
        "models/kws/1.4.0/esp32s3-int8/.hidden",
        "models/kws/1.4.0/esp32s3-int8/C:model",
        "models/kws/1.4.0/esp32s3-int8/mo\x00del",
        "",
        "models/" + "k" * 600,
    ],
)
def test_bad_path_refused(path: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        split_target_path(path)
    assert caught.value.code == ErrorCode.INVALID_TARGET_PATH


@pytest.mark.parametrize(
    "path",
    [
        "models/asr/1.4.0/esp32s3-int8/model.tflite",  # other model's path
        "models/kws/1.3.0/esp32s3-int8/model.tflite",  # other version
        "models/kws/1.4.0/jetson-orin-fp16/model.tflite",  # other hardware
        "../../etc/passwd",
    ],
)
def test_desired_refuses_path_that_disagrees_with_entry(
    desired_dict: dict[str, Any], path: str
) -> None:
    desired_dict["models"][0]["path"] = path

    with pytest.raises(ProtocolError) as caught:
        parse_desired(json.dumps(desired_dict).encode())
    assert caught.value.code == ErrorCode.INVALID_TARGET_PATH

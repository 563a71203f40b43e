"""The bad-input catalogue (bad_inputs.py) in-process: the Gateway over fake stages answers
every case with its status and a message naming the field, quoting no more than a short
prefix of the input, before any stage is called."""
from __future__ import annotations

import pytest

from emu35_proto.v1 import api_pb2
from services.rpc import stage_wire
from services.rpc.errors import PublicError, public_error

from .bad_inputs import CASES, Case
from .conftest import run

MAX_DETAILS = 400  # a status message stays short whatever the input


def test_the_catalogue_is_broad():
    assert len(CASES) >= 150
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gets_its_status_naming_the_field(case: Case, gateway):
    with pytest.raises(PublicError) as info:
        try:  # the gateway deployment parses the body it is sent (services/stages/gateway.py)
            pb = stage_wire.parse(api_pb2.GenerateRequest, case.request, "request")
        except Exception as e:
            raise public_error(e) from None
        run(gateway, pb)
    status = info.value.status
    assert (status.code.name, case.field in status.message) == (case.code, True), status.message
    assert len(status.message) <= MAX_DETAILS, status.message[:200]
    assert "Traceback" not in status.message
    assert gateway.stages.encoded == [] and gateway.stages.requests == []  # no work done

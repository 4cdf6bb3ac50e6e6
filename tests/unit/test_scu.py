"""The outbox's SCU associations: a response goes to the send that waits for it.

pynetdicom's association reactor and its ``send_*`` methods race for a response (the reactor
can pass its checkpoint just before a sender clears it, then take the response): under load
the outbox's C-STORE then waited out the DIMSE timeout. ``hold_responses_for_the_sender``
makes the reactor's look find nothing while a sender holds the checkpoint.
"""

from __future__ import annotations

import inspect

from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE

from ichnode.node.scu import hold_responses_for_the_sender


def _response() -> C_STORE:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 1
    rsp.Status = 0x0000
    return rsp


def test_a_response_waits_for_its_sender_while_the_reactor_is_held():
    assoc = hold_responses_for_the_sender(Association(AE(), "requestor"))
    rsp = _response()
    assoc.dimse.msg_queue.put((1, rsp))
    assoc._reactor_checkpoint.clear()  # a sender has paused the reactor and sent its request
    assert assoc.dimse.get_msg(block=False) == (None, None)  # the reactor's look: nothing
    assert assoc.dimse.get_msg(block=True) == (1, rsp)  # the sender's wait: its response


def test_the_reactor_still_takes_messages_when_no_sender_holds_it():
    assoc = hold_responses_for_the_sender(Association(AE(), "requestor"))
    rsp = _response()
    assoc.dimse.msg_queue.put((1, rsp))
    assert assoc.dimse.get_msg(block=False) == (1, rsp)


def test_pynetdicom_still_looks_without_blocking_in_the_reactor_and_blocks_in_the_senders():
    # The guard tells the reactor from a sender by ``block``: if pynetdicom changes how either
    # takes its messages, this fails and the guard must be looked at again.
    assert "get_msg(block=False)" in inspect.getsource(Association._run_reactor)
    for send in (Association.send_c_store, Association.send_c_echo):
        source = inspect.getsource(send)
        assert "_reactor_checkpoint.clear()" in source and "get_msg(block=True)" in source

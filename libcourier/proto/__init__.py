"""What every protocol core shares: a bounded receive buffer and the error kinds."""

from libcourier.proto.buffer import NEED_DATA, LineTooLong, ReceiveBuffer
from libcourier.proto.errors import ClientError, ProtocolError, Refusal, ServerFault

__all__ = [
    "NEED_DATA",
    "ClientError",
    "LineTooLong",
    "ProtocolError",
    "ReceiveBuffer",
    "Refusal",
    "ServerFault",
]

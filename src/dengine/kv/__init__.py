"""Pure key-value semantics: validation, the command codec, the stores (plain and etcd's
MVCC), etcd's request checks, consistency levels.

No I/O, no asyncio, no threads: the file state machine wraps a `Store` for durability,
the simulator drives one directly, the engine and the server validate and encode through
this package.
"""

from dengine.kv.codec import (
    OP_COMPACTION,
    OP_CONFIG,
    OP_DELETE,
    OP_DELETE_RANGE,
    OP_INSERT,
    OP_NOOP,
    OP_PUT,
    OP_REJECTED,
    OP_TXN,
    decode_any_command,
    decode_command,
    decode_entry,
    encode_command,
    encode_delete,
    encode_insert,
    encode_request,
)
from dengine.kv.consistency import (
    EVENTUAL,
    LEASE,
    LEVELS,
    LINEARIZABLE,
    WIRE_LEVELS,
    WIRE_NAMES,
    Consistency,
    consistency_from_wire,
    consistency_name,
    consistency_to_wire,
)
from dengine.kv.etcd_check import KvError
from dengine.kv.mvcc import Applied, Change, MvccStore
from dengine.kv.store import ApplyResult, Op, Store
from dengine.kv.validate import (
    Limits,
    as_bytes,
    check_encoded_commands,
    check_key,
    check_keys,
    check_node_id,
    check_value,
    check_write_size,
    encode_commands,
)

__all__ = [
    "EVENTUAL",
    "LEASE",
    "LEVELS",
    "LINEARIZABLE",
    "OP_COMPACTION",
    "OP_CONFIG",
    "OP_DELETE",
    "OP_DELETE_RANGE",
    "OP_INSERT",
    "OP_NOOP",
    "OP_PUT",
    "OP_REJECTED",
    "OP_TXN",
    "WIRE_LEVELS",
    "WIRE_NAMES",
    "Applied",
    "ApplyResult",
    "Change",
    "Consistency",
    "KvError",
    "Limits",
    "MvccStore",
    "Op",
    "Store",
    "as_bytes",
    "check_encoded_commands",
    "check_key",
    "check_keys",
    "check_node_id",
    "check_value",
    "check_write_size",
    "consistency_from_wire",
    "consistency_name",
    "consistency_to_wire",
    "decode_any_command",
    "decode_command",
    "decode_entry",
    "encode_command",
    "encode_commands",
    "encode_delete",
    "encode_insert",
    "encode_request",
]

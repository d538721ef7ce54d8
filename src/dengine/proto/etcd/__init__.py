"""etcd v3's API messages (etcd 3.4's names and numbers, dengine's proto packages).

`kv_pb2` (mvccpb), `auth_pb2` (authpb), `rpc_pb2` (etcdserverpb), `v3lock_pb2`
(v3lockpb), `v3election_pb2` (v3electionpb); regenerate with
`python tools/gen_proto.py`. See docs/etcd-model.md.
"""

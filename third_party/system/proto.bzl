"""C++ libraries from .proto files with the system protoc and grpc_cpp_plugin (no downloads).

tether_proto_library(name, srcs) defines `name` (the messages, protobuf only) and
`name_grpc` (the service stubs, which also link gRPC), so plain-C++ cores can use the
messages without linking gRPC.
"""

def tether_proto_library(name, srcs, deps = [], visibility = None):
    msg_outs = []
    grpc_outs = []
    for src in srcs:
        base = src[:-len(".proto")]
        msg_outs += [base + ".pb.h", base + ".pb.cc"]
        grpc_outs += [base + ".grpc.pb.h", base + ".grpc.pb.cc"]
    pkg = native.package_name()
    native.genrule(
        name = name + "_gen",
        srcs = srcs,
        outs = msg_outs + grpc_outs,
        cmd = ("$(location @system//:protoc) -I. -I/usr/include --cpp_out=$(GENDIR) " +
               "--grpc_out=$(GENDIR) " +
               "--plugin=protoc-gen-grpc=$(location @system//:grpc_cpp_plugin) " +
               " ".join(["%s/%s" % (pkg, s) for s in srcs])),
        tools = ["@system//:protoc", "@system//:grpc_cpp_plugin"],
    )
    native.cc_library(
        name = name,
        srcs = [o for o in msg_outs if o.endswith(".cc")],
        hdrs = [o for o in msg_outs if o.endswith(".h")],
        deps = deps + ["@system//:protobuf"],
        visibility = visibility,
    )
    native.cc_library(
        name = name + "_grpc",
        srcs = [o for o in grpc_outs if o.endswith(".cc")],
        hdrs = [o for o in grpc_outs if o.endswith(".h")],
        deps = [":" + name, "@system//:grpc"],
        visibility = visibility,
    )

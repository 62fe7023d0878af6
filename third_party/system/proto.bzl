"""cc_library from .proto files with the system protoc and grpc_cpp_plugin (no downloads)."""

def tether_proto_library(name, srcs, deps = [], grpc = True, visibility = None):
    outs = []
    for src in srcs:
        base = src[:-len(".proto")]
        outs += [base + ".pb.h", base + ".pb.cc"]
        if grpc:
            outs += [base + ".grpc.pb.h", base + ".grpc.pb.cc"]
    pkg = native.package_name()
    cmd = ("$(location @system//:protoc) -I. -I/usr/include " +
           "--cpp_out=$(GENDIR) ")
    if grpc:
        cmd += ("--grpc_out=$(GENDIR) " +
                "--plugin=protoc-gen-grpc=$(location @system//:grpc_cpp_plugin) ")
    cmd += " ".join(["%s/%s" % (pkg, s) for s in srcs])
    native.genrule(
        name = name + "_gen",
        srcs = srcs + [d + "_srcs" for d in []],
        outs = outs,
        cmd = cmd,
        tools = ["@system//:protoc", "@system//:grpc_cpp_plugin"],
    )
    native.cc_library(
        name = name,
        srcs = [o for o in outs if o.endswith(".cc")],
        hdrs = [o for o in outs if o.endswith(".h")],
        deps = deps + ["@system//:protobuf"] + (["@system//:grpc"] if grpc else []),
        visibility = visibility,
    )

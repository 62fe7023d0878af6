"""Wraps Debian's system libraries as Bazel targets, with no downloads.

Each library's flags come from `pkg-config --cflags --libs` at fetch time: `-D` becomes
`defines`, `-I` is dropped (the headers live in /usr/include, already on the toolchain's
path) and everything else is kept as `linkopts` in pkg-config's order.
"""

# name -> (pkg-config modules, extra literal linkopts)
_LIBS = {
    "absl": ([
        "absl_status",
        "absl_statusor",
        "absl_strings",
        "absl_str_format",
        "absl_synchronization",
        "absl_time",
        "absl_flags",
        "absl_flags_parse",
        "absl_random_random",
        "absl_hash",
        "absl_raw_hash_set",
        "absl_base",
        "absl_log_severity",
        "absl_cord",
    ], []),
    "protobuf": (["protobuf"], []),
    "grpc": (["grpc++", "grpc"], ["-lgrpc++_reflection"]),
    "openssl": (["libcrypto", "libssl"], []),
    "gtest": (["gtest", "gmock"], ["-lpthread"]),
    "gtest_main": (["gtest_main"], []),
    "hiredis": (["hiredis"], []),
}

def _pkg_config(ctx, modules):
    res = ctx.execute(["pkg-config", "--cflags", "--libs"] + modules)
    if res.return_code != 0:
        fail("pkg-config failed for %s: %s (run scripts/install_deps.sh)" % (modules, res.stderr))
    defines = []
    linkopts = []
    for flag in res.stdout.strip().split(" "):
        if not flag:
            continue
        if flag.startswith("-D"):
            defines.append(flag[2:])
        elif flag.startswith("-I"):
            continue
        else:
            linkopts.append(flag)
    return defines, linkopts

_PATCHED_CONNECTION = "websocketpp_patched/websocketpp/connection.hpp"

def _patch_websocketpp(ctx):
    """Writes Debian's websocketpp/connection.hpp with one change, found before /usr/include.

    Every connection's send queue is a std::queue, so a std::deque, which allocates its map and a
    first 512-byte chunk when constructed: about 600 bytes per connection before anything is
    sent, most of an idle edge's memory over its 8 KB target. A std::list allocates nothing
    while empty. (See third_party/README.md.)
    """
    original = "/usr/include/websocketpp/connection.hpp"
    text = ctx.read(original)
    old_queue = "    std::queue<message_ptr> m_send_queue;"
    old_include = "#include <queue>"
    if text.count(old_queue) != 1 or text.count(old_include) != 1:
        fail("%s is not the websocketpp 0.8.2 header this patch expects" % original)
    text = text.replace(old_queue, "    std::queue<message_ptr, std::list<message_ptr> > m_send_queue;")
    text = text.replace(old_include, "#include <list>\n" + old_include)
    ctx.file(_PATCHED_CONNECTION, text)

def _system_libs_impl(ctx):
    build = ['package(default_visibility = ["//visibility:public"])', ""]
    for name, (modules, extra) in _LIBS.items():
        defines, linkopts = _pkg_config(ctx, modules)
        build.append("cc_library(name = %r, defines = %r, linkopts = %r)" % (
            name,
            defines,
            linkopts + extra,
        ))

    # Header-only libraries: websocketpp (with standalone Asio) and nlohmann/json.
    _patch_websocketpp(ctx)
    build.append('cc_library(name = "websocketpp", hdrs = [%r], includes = ["websocketpp_patched"], defines = ["ASIO_STANDALONE", "_WEBSOCKETPP_CPP11_STL_"], linkopts = ["-lpthread"])' % _PATCHED_CONNECTION)
    build.append('cc_library(name = "json")')
    for tool in ["protoc", "grpc_cpp_plugin"]:
        path = ctx.which(tool)
        if path == None:
            fail("%s not found (run scripts/install_deps.sh)" % tool)
        ctx.symlink(path, tool)
    build.append('exports_files(["protoc", "grpc_cpp_plugin"])')
    ctx.file("BUILD.bazel", "\n".join(build) + "\n")
    ctx.file("WORKSPACE", 'workspace(name = "%s")\n' % ctx.name)

system_libs = repository_rule(
    implementation = _system_libs_impl,
    local = True,
    environ = ["PATH", "PKG_CONFIG_PATH"],
)

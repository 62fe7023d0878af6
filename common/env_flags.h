// Flags from the environment, for containers: TETHER_<FLAG_NAME>=value acts as --flag_name=value.
#ifndef TETHER_COMMON_ENV_FLAGS_H_
#define TETHER_COMMON_ENV_FLAGS_H_

#include <vector>

namespace tether::common {

// Returns argv with `--name=value` inserted right after argv[0] for every environment variable
// TETHER_NAME=value (name lowercased) that names a defined flag, so flags given on the command line
// still win. The strings live until the process exits.
std::vector<char*> ArgsWithEnvFlags(int argc, char** argv);

// The binaries' common start: sets the usage text, turns off Abseil's per-acquisition
// deadlock detection (tests keep it), parses flags with ArgsWithEnvFlags and returns the
// positional arguments (argv[0] first).
std::vector<char*> ParseFlags(int argc, char** argv, const char* usage);

}  // namespace tether::common

#endif  // TETHER_COMMON_ENV_FLAGS_H_

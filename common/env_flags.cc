#include "common/env_flags.h"

#include <cctype>
#include <cstring>
#include <string>

#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/synchronization/mutex.h"

extern char** environ;

namespace tether::common {

std::vector<char*> ArgsWithEnvFlags(int argc, char** argv) {
  static std::vector<std::string>* storage = new std::vector<std::string>();
  std::vector<char*> out;
  out.push_back(argv[0]);
  constexpr char kPrefix[] = "TETHER_";
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::strncmp(*e, kPrefix, sizeof(kPrefix) - 1) != 0) continue;
    const char* eq = std::strchr(*e, '=');
    if (eq == nullptr) continue;
    std::string name(static_cast<const char*>(*e + sizeof(kPrefix) - 1), eq);
    for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    // Other programs' TETHER_* variables are not ours to reject.
    if (absl::FindCommandLineFlag(name) == nullptr) continue;
    storage->push_back("--" + name + "=" + std::string(eq + 1));
  }
  for (std::string& s : *storage) out.push_back(s.data());
  for (int i = 1; i < argc; ++i) out.push_back(argv[i]);
  return out;
}

std::vector<char*> ParseFlags(int argc, char** argv, const char* usage) {
  absl::SetProgramUsageMessage(usage);
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  std::vector<char*> args = ArgsWithEnvFlags(argc, argv);
  return absl::ParseCommandLine(static_cast<int>(args.size()), args.data());
}

}  // namespace tether::common

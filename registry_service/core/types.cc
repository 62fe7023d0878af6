#include "registry_service/core/types.h"

#include <utility>

namespace tether::registry {

InvokeOutcome Failure(InvokeCode code, std::string message) {
  InvokeOutcome o;
  o.code = code;
  o.message = std::move(message);
  return o;
}

const char* InvokeCodeName(InvokeCode code) {
  switch (code) {
    case InvokeCode::kOk:
      return "OK";
    case InvokeCode::kNodeError:
      return "NODE_ERROR";
    case InvokeCode::kNotConnected:
      return "NOT_CONNECTED";
    case InvokeCode::kTimeout:
      return "TIMEOUT";
    case InvokeCode::kDisconnected:
      return "DISCONNECTED";
    case InvokeCode::kCommandNotAllowed:
      return "COMMAND_NOT_ALLOWED";
    case InvokeCode::kCancelled:
      return "CANCELLED";
    case InvokeCode::kInvalid:
      return "INVALID";
  }
  return "UNKNOWN";
}

}  // namespace tether::registry

// The Gateway's method names, for answering a node's request for a method the edge does not
// serve as the Gateway would (node-protocol.md §7).
#ifndef TETHER_WS_EDGE_PROTOCOL_GATEWAY_METHODS_H_
#define TETHER_WS_EDGE_PROTOCOL_GATEWAY_METHODS_H_

#include "absl/strings/string_view.h"

namespace tether::edge::protocol {

// A method the Gateway serves to operators only: a node calling it gets "unauthorized role:
// node". Any other method the edge does not serve gets "unknown method: <m>": the node methods
// it lacks (after which a node host stops asking) and methods the Gateway does not have.
bool IsGatewayOperatorMethod(absl::string_view method);

}  // namespace tether::edge::protocol

#endif  // TETHER_WS_EDGE_PROTOCOL_GATEWAY_METHODS_H_

// Package wrapper is the contract between micro's wazero host (host/wasm) and a WebAssembly
// wrapper guest (sdk/wrapper, or a guest in any language): the names of the host functions
// a guest imports and of the functions it exports, their phases, result codes, log levels,
// size limits, and the layout of the call block that micro fills for a guest before each
// call. abi/README.md describes the memory protocol around them.
//
// All names and numbers here are part of ABI version 1. A change that breaks guests bumps
// the version and with it the name of [ExportABIVersion].
package wrapper

// ModuleName is the Wasm import module that holds micro's host functions.
const ModuleName = "micro"

// Functions a guest exports. Every one of them is required, with exactly the signature
// given; the host refuses a module that lacks one or declares another signature.
const (
	// ExportABIVersion is the marker of ABI version 1: () -> (). The host never calls it.
	ExportABIVersion = "micro_wrapper_abi_v1"
	// ExportInitialize is the WASI reactor initializer: () -> (). The host calls it once,
	// right after instantiation, before anything else.
	ExportInitialize = "_initialize"
	// ExportMemory is the guest's linear memory, through which all strings cross.
	ExportMemory = "memory"
	// ExportOnInit configures an instance: () -> i32. It returns [InitOK], or anything else
	// when the guest cannot start (usually a bad config); the message comes through
	// [ImportFail] or the log. The host calls it once per instance, after ExportInitialize.
	ExportOnInit = "on_init"
	// ExportOnRequest decides about a call: () -> i32, one of the Result codes.
	ExportOnRequest = "on_request"
	// ExportOnResponse sees the outcome of a call that the guest let through: () -> ().
	ExportOnResponse = "on_response"
)

// Host functions a guest may import from [ModuleName]. Pointers and lengths are i32 values
// (unsigned offsets into the guest's memory). A function that writes into a guest buffer
// (the "get" ones with buf_ptr and buf_cap) returns the full length of the value, and writes
// the value only when that length is at most buf_cap; when it is larger, the guest calls
// again with a buffer of that size. Every range a guest hands over must lie inside its
// memory, or the host traps the guest.
const (
	// ImportGetConfig writes the wrapper's config, a JSON object:
	// (buf_ptr, buf_cap i32) -> (len i32). Any phase.
	ImportGetConfig = "get_config"
	// ImportGetService writes the called service's name: (buf_ptr, buf_cap i32) -> (len i32).
	ImportGetService = "get_service"
	// ImportGetEndpoint writes the called endpoint, e.g. "Greeter.Hello":
	// (buf_ptr, buf_cap i32) -> (len i32).
	ImportGetEndpoint = "get_endpoint"
	// ImportGetNode writes the node's ID: the selected node on the client side, the node
	// the call was sent to on the server side. (buf_ptr, buf_cap i32) -> (len i32).
	ImportGetNode = "get_node"
	// ImportGetCaller writes who made the call, or nothing when unknown:
	// (buf_ptr, buf_cap i32) -> (len i32).
	ImportGetCaller = "get_caller"
	// ImportGetHeader writes a request header's value:
	// (name_ptr, name_len, buf_ptr, buf_cap i32) -> (len i32). It returns [HeaderAbsent]
	// when the request has no such header. Names match case-insensitively.
	ImportGetHeader = "get_header"
	// ImportGetBudget returns the call's remaining budget in nanoseconds: () -> (i64). It may
	// be zero or negative once the budget is spent, and is [BudgetNone] when the call has
	// no deadline.
	ImportGetBudget = "get_budget"
	// ImportSetHeader adds a header to the request, applied when the call continues:
	// (name_ptr, name_len, val_ptr, val_len i32) -> (). Phase on_request only. A later call
	// with the same name (case-insensitively) replaces the value.
	ImportSetHeader = "set_header"
	// ImportSetReplyHeader adds a header to the reply of a rejection, e.g. Retry-After:
	// (name_ptr, name_len, val_ptr, val_len i32) -> (). Phase on_request only.
	ImportSetReplyHeader = "set_reply_header"
	// ImportSetReject gives the status and message of a rejection:
	// (status i32, msg_ptr, msg_len i32) -> (). Phase on_request only; the last call wins.
	// Status must lie in [MinRejectStatus, MaxRejectStatus]. It takes effect only when
	// on_request returns [ResultReject] or [ResultRejectNode].
	ImportSetReject = "set_reject"
	// ImportGetStatus returns the HTTP status of the call's answer, or 0 when no answer came:
	// () -> (i32). Phase on_response only.
	ImportGetStatus = "get_status"
	// ImportGetError writes why no answer came (a connect error, a timeout), or nothing when
	// one came: (buf_ptr, buf_cap i32) -> (len i32). Phase on_response only.
	ImportGetError = "get_error"
	// ImportGetLatency returns how long the attempt took, in nanoseconds: () -> (i64). Phase
	// on_response only.
	ImportGetLatency = "get_latency"
	// ImportGetFault reports whether the call's outcome counts against the node: () -> (i32),
	// 1 when it does, 0 when it does not. Phase on_response only. An outcome is the node's
	// fault when the node could not be reached, timed out, or its app answered with a 5xx
	// on its own; a caller's mistake (a 4xx), a call that micro refused or a wrapper
	// rejected, and a timeout that the caller chose (a budget shorter than micro's default)
	// are not. A breaker should count only faults. It was added to version 1: a guest that
	// does not import it works as before.
	ImportGetFault = "get_fault"
	// ImportGetLease reports this micro's share of a global rate limit: a rate that a quota
	// service splits among the micros that share a named resource, and that this micro
	// holds as a lease. (name_ptr, name_len i32, demand i64, out_ptr i32) -> (held i32).
	// Any phase. name is the resource, 1 to [MaxResourceNameLen] bytes of A-Z, a-z, 0-9,
	// '.', '_' and '-'. demand, read as unsigned, is how many calls the guest saw for the
	// resource since it last asked (allowed and rejected alike); micro adds it to what it
	// tells the quota service. micro writes the rate, in calls per second, as a
	// little-endian f64 into the 8 bytes at out_ptr (which need not be aligned), and
	// returns [LeaseHeld] when this micro holds a lease for the resource, or [LeaseNone],
	// with the rate 0, when it does not: none yet, the last one expired while the quota
	// service was out of reach, or this micro has no quota service. The guest then applies
	// a safe share of its own. A rate is always finite and at least 0. get_lease never
	// waits for the quota service: micro fetches and renews leases in the background,
	// and asks at once for a resource named for the first time. It is a host call (about
	// 60 ns), so a guest asks now and then (the rate-limit wrapper asks every 100 ms of
	// call time), not per call. A name out of range, empty, longer than the limit or with
	// another byte, and an out_ptr whose 8 bytes are not all inside the memory, trap the
	// guest; a trapped call records no demand. It was added to version 1: a guest that
	// does not import it works as before.
	ImportGetLease = "get_lease"
	// ImportSetCallBlock registers the guest's call block: (ptr, len i32) -> (). Phase
	// on_init only. The block is len bytes of the guest's memory at ptr, with len at least
	// [CallBlockLen]; before each later on_request and on_response, micro writes into it
	// what the guest would otherwise ask for with a host call per value: the time, the
	// budget, the outcome, and a version of each string field of the call (see the
	// CallBlock constants). Reading it costs the guest nothing, where a host call costs
	// about 60 ns and a WASI clock read (time.Now) about 200 ns. micro writes nothing
	// during the call itself, nor before on_init; a later call replaces the block. It was
	// added to version 1: a guest that does not import it works as before.
	ImportSetCallBlock = "set_call_block"
	// ImportSetState publishes a small named state of the guest's for a scope, such as a
	// breaker's state for a node: (service_ptr, service_len, endpoint_ptr, endpoint_len,
	// node_ptr, node_len, value_ptr, value_len i32) -> (). Any phase. The scope is the
	// service, endpoint and node given, any of them empty (an empty field is not part of
	// the key: service "" and node "n1" is node n1's state across services); value, e.g.
	// "open", replaces the scope's state, and an empty value deletes it. micro keeps the
	// states per wrapper, across its instances (the last to set a scope's state owns it),
	// and shows them on its dashboard and metrics; it never hands them back to a guest.
	// When an instance fails and micro replaces it, the states it owned are deleted, since
	// what they described lived in that instance's memory; the new instance publishes its
	// own. Each field is at most [MaxStateFieldLen] bytes and the value at most
	// [MaxStateValueLen], all valid UTF-8 without control characters; a longer one, another
	// byte, or a range outside the memory traps the guest. A wrapper keeps at most
	// [MaxStates] states: past that, a state for a new scope is dropped (micro counts and
	// logs it), while existing ones may still change or be deleted. It is a host call
	// (about 60 ns): a guest publishes a state when it changes, not per call. It was added
	// to version 1: a guest that does not import it works as before.
	ImportSetState = "set_state"
	// ImportSetPhases says which phases the guest wants: (mask i32) -> (), a set of Phase
	// bits. Phase on_init only. Without it the host calls both; a guest that leaves out
	// [PhaseResponse] saves the host a call per request.
	ImportSetPhases = "set_phases"
	// ImportLog writes a line into micro's log: (level, msg_ptr, msg_len i32) -> (). Any
	// phase. Level is one of the Log levels; a message longer than [MaxLogLen] is cut.
	ImportLog = "log"
	// ImportFail ends the current guest call as a failure, with a message:
	// (msg_ptr, msg_len i32) -> (); it does not return. During on_init it fails the
	// wrapper's load with the message (a bad config); in any other phase it counts as a
	// trap: the call gets the wrapper's on_trap verdict and the instance is replaced.
	ImportFail = "fail"
)

// The call block: the layout of the block that a guest registers with
// [ImportSetCallBlock]. Each constant is a byte offset into the block; values are
// little-endian. micro fills the whole block before each on_request and on_response, all
// values as of the moment it starts that guest call, so they agree with one another.
const (
	// CallBlockSize (u32) is how many bytes of the block micro fills: [CallBlockLen] in this
	// version. It is 0 until micro first fills the block, so during on_init. The 4 bytes
	// after it are reserved, and micro writes 0 there.
	CallBlockSize = 0
	// CallBlockNow (i64) is the wall clock, in nanoseconds since the Unix epoch, when micro
	// started this guest call: a guest needs no WASI clock read for the time of the call.
	// It is micro's monotonic clock on the wall clock's scale, set again at least every
	// 100 ms, so it never goes back between two calls unless the system's clock stepped.
	CallBlockNow = 8
	// CallBlockBudget (i64) is the call's remaining budget at CallBlockNow, as
	// [ImportGetBudget] returns it: [BudgetNone] without a deadline.
	CallBlockBudget = 16
	// CallBlockLatency (i64) is [ImportGetLatency]'s value in on_response, 0 in on_request.
	CallBlockLatency = 24
	// CallBlockStatus (i32) is [ImportGetStatus]'s value in on_response, 0 in on_request.
	CallBlockStatus = 32
	// CallBlockFault (i32) is [ImportGetFault]'s value in on_response, 0 in on_request.
	CallBlockFault = 36
	// CallBlockVersions is where five u64 versions start, one per string field of the
	// call, in the order of the Field constants: the version at
	// CallBlockVersions+8*FieldService is the service's. micro changes a field's version
	// whenever the field differs from its value in the instance's previous guest call, and
	// never uses 0. So a guest that kept a value it read (with get_service, ...) together
	// with the version it read it under may use it again, without a host call, for as long
	// as the version stays the same. The error is empty during on_request.
	CallBlockVersions = 40
	// CallBlockLen is the size of the block in this version. A guest may register a larger
	// block; micro fills the first CallBlockSize bytes and leaves the rest alone.
	CallBlockLen = CallBlockVersions + 8*(FieldError+1)
)

// The string fields of a call, in the order of their versions in the call block.
const (
	FieldService  = 0 // [ImportGetService]
	FieldEndpoint = 1 // [ImportGetEndpoint]
	FieldNode     = 2 // [ImportGetNode]
	FieldCaller   = 3 // [ImportGetCaller]
	FieldError    = 4 // [ImportGetError]
)

// Results of [ExportOnRequest].
const (
	// ResultContinue lets the call go on, with the headers set by [ImportSetHeader].
	ResultContinue int32 = 0
	// ResultReject ends the call with the status and message of [ImportSetReject], or with
	// [DefaultRejectStatus] when the guest gave none.
	ResultReject int32 = 1
	// ResultRejectNode refuses only the selected node: the client tries another node. On the
	// server side it is a rejection with status 503.
	ResultRejectNode int32 = 2
)

// InitOK is what [ExportOnInit] returns when the instance is ready.
const InitOK int32 = 0

// Phase bits, for [ImportSetPhases].
const (
	PhaseRequest  int32 = 1 << 0
	PhaseResponse int32 = 1 << 1
)

// Log levels for [ImportLog]. They are log/slog's levels; a level between two of them is
// logged at that number, as slog does.
const (
	LogDebug int32 = -4
	LogInfo  int32 = 0
	LogWarn  int32 = 4
	LogError int32 = 8
)

// Special values.
const (
	// HeaderAbsent is what [ImportGetHeader] returns for a header the request lacks.
	HeaderAbsent int32 = -1
	// BudgetNone is what [ImportGetBudget] returns for a call without a deadline: the
	// largest i64.
	BudgetNone int64 = 1<<63 - 1
	// DefaultRejectStatus is the status of a rejection whose guest called no
	// [ImportSetReject].
	DefaultRejectStatus int32 = 503
	// MinRejectStatus and MaxRejectStatus bound the status of a rejection.
	MinRejectStatus int32 = 400
	MaxRejectStatus int32 = 599
	// LeaseHeld is what [ImportGetLease] returns when this micro holds a lease for the
	// resource, and LeaseNone what it returns when it does not.
	LeaseHeld int32 = 1
	LeaseNone int32 = 0
)

// Limits. A guest that passes more to a host function is trapped, except for messages,
// which are cut.
const (
	// MaxHeaderNameLen bounds a header name given to a set or get function.
	MaxHeaderNameLen = 256
	// MaxHeaderValueLen bounds a header value given to a set function.
	MaxHeaderValueLen = 8 << 10
	// MaxHeaders bounds how many headers one on_request may set, request and reply
	// headers counted apart.
	MaxHeaders = 64
	// MaxMessageLen bounds the message of a rejection or a failure; longer ones are cut.
	MaxMessageLen = 1 << 10
	// MaxLogLen bounds one log message; longer ones are cut.
	MaxLogLen = 4 << 10
	// MaxResourceNameLen bounds the name of a resource given to [ImportGetLease]; a name
	// is at least 1 byte long.
	MaxResourceNameLen = 128
	// MaxStateFieldLen bounds each of the service, endpoint and node of a scope given to
	// [ImportSetState].
	MaxStateFieldLen = 256
	// MaxStateValueLen bounds a state given to [ImportSetState].
	MaxStateValueLen = 256
	// MaxStates bounds how many states ([ImportSetState]) micro keeps for one wrapper,
	// across its instances; past it, states for new scopes are dropped.
	MaxStates = 1024
	// MaxConfigLen bounds the config a wrapper gets; the host refuses to load a wrapper
	// with a larger one.
	MaxConfigLen = 1 << 20
)

// ReservedHeaderPrefix starts the names of the headers micro itself carries (Micro-Service,
// Micro-Timeout, ...). A guest may read them but not set them: [ImportSetHeader] and
// [ImportSetReplyHeader] trap on such a name (compared case-insensitively). It is
// abi.HeaderPrefix, stated again so that a guest's module needs no more than this package.
const ReservedHeaderPrefix = "Micro-"

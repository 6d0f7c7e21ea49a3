package relay

import (
	"encoding/json"
	"net/http"
	"strconv"
)

// etcd's v2 error codes the relay answers with itself.
const (
	codeKeyNotFound       = 100
	codeNotDir            = 104
	codeRootReadOnly      = 107
	codePrevValueRequired = 201
	codeTTLNaN            = 202
	codeIndexNaN          = 203
	codeInvalidField      = 209
	codeInvalidForm       = 210
	codeRefreshValue      = 211
	codeRefreshTTL        = 212
	codeRaftInternal      = 300
	codeHistoryCleared    = 401
)

// errorMessages are etcd's messages for those codes.
var errorMessages = map[int]string{
	codeKeyNotFound:       "Key not found",
	codeNotDir:            "Not a directory",
	codeRootReadOnly:      "Root is read only",
	codePrevValueRequired: "PrevValue is Required in POST form",
	codeTTLNaN:            "The given TTL in POST form is not a number",
	codeIndexNaN:          "The given index in POST form is not a number",
	codeInvalidField:      "Invalid field",
	codeInvalidForm:       "Invalid POST form",
	codeRefreshValue:      "Value provided on refresh",
	codeRefreshTTL:        "A TTL must be provided on refresh",
	codeRaftInternal:      "Raft Internal Error",
	codeHistoryCleared:    "The event in requested index is outdated and cleared",
}

// etcdError is an error answer in etcd's v2 shape.
type etcdError struct {
	Code    int    `json:"errorCode"`
	Message string `json:"message"`
	Cause   string `json:"cause,omitempty"`
	Index   uint64 `json:"index"`

	httpStatus int // when not etcd's for the code
}

func newError(code int, cause string, index uint64) *etcdError {
	return &etcdError{Code: code, Message: errorMessages[code], Cause: cause, Index: index}
}

// errReadOnly is the answer to a write the relay does not pass on: the
// gate's read-only answer, so that clients see one refusal whichever they
// talk to.
func errReadOnly() *etcdError {
	return &etcdError{Code: codeRootReadOnly, Message: "This cluster is in read-only mode",
		Cause: "Cluster configured to be read-only", httpStatus: http.StatusForbidden}
}

func (e *etcdError) Error() string { return e.Message + " (" + e.Cause + ")" }

// status is the HTTP status etcd gives the code.
func (e *etcdError) status() int {
	if e.httpStatus != 0 {
		return e.httpStatus
	}
	switch e.Code {
	case codeKeyNotFound:
		return http.StatusNotFound
	case codeRaftInternal:
		return http.StatusInternalServerError
	}
	return http.StatusBadRequest
}

// body is e in JSON, with the newline etcd ends it with.
func (e *etcdError) body() []byte {
	b, _ := json.Marshal(e)
	return append(b, '\n')
}

// write sends e as etcd does: X-Etcd-Index set to its index, the JSON body
// and a newline.
func (e *etcdError) write(w http.ResponseWriter) {
	body := e.body()
	h := w.Header()
	h["X-Etcd-Index"] = []string{strconv.FormatUint(e.Index, 10)}
	h["Content-Type"] = jsonContentType
	h["Content-Length"] = []string{strconv.Itoa(len(body))}
	w.WriteHeader(e.status())
	w.Write(body)
}

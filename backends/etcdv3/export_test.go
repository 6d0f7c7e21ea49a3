package etcdv3

// ProgressInOrder exposes progressInOrder to the tests.
var ProgressInOrder = progressInOrder

package policy

// For the reference tests (reference_test.go, package policy_test), which
// compare BuildInput with the load harness's NaiveInput.
var (
	TestRequests  = testRequests
	TestAgent     = testAgent
	SampleRequest = sampleRequest
)

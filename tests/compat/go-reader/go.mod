module netsycompat

go 1.25

require (
	github.com/klauspost/compress v1.20.4
	google.golang.org/protobuf v1.36.12
)

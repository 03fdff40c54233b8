// Command hello is a go: source fixture.
package main

import "fmt"

func main() { fmt.Println("hello from a go: source") }
